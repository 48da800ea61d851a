//! The one accessor for packet memory. Every read and write of the frame goes
//! through [`ptr_at`], which proves to the verifier that `[off, off + size)`
//! lies inside `[data, data_end)`. After `bpf_xdp_adjust_head` the context's
//! data pointers change, and every access re-derives them through here.

use aya_ebpf::programs::XdpContext;

/// Offsets beyond this are never valid; the bound lets the verifier track
/// variable offsets (IHL, IPv6 extension headers) without overflow worries.
pub const MAX_OFFSET: usize = 512;

/// A pointer to a `T` at byte `off` of the frame, or `None` if the frame is
/// too short.
///
/// `data` and `data_end` are loaded afresh (volatile) on every call. LLVM
/// would otherwise drop this bounds check when an earlier comparison (say,
/// "the IP total length fits in the frame") implies it arithmetically; the
/// verifier cannot follow such implications and rejects the unchecked read.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    // SAFETY: `ctx.ctx` is the live xdp_md for this run; reading its fields
    // is what `XdpContext::data` does, only volatile.
    let (start, end) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*ctx.ctx).data) as usize,
            core::ptr::read_volatile(&raw const (*ctx.ctx).data_end) as usize,
        )
    };
    if off > MAX_OFFSET || start + off + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *mut T)
}

/// Copies the `T` at byte `off` out of the frame. `T` must be a plain byte
/// layout (the network-types headers and byte arrays are).
#[inline(always)]
pub fn read_at<T: Copy>(ctx: &XdpContext, off: usize) -> Option<T> {
    // SAFETY: `ptr_at` checked that the whole `T` lies inside the frame; the
    // read is unaligned because headers sit at arbitrary offsets.
    ptr_at::<T>(ctx, off).map(|ptr| unsafe { ptr.read_unaligned() })
}

/// Copies the `T` at byte `off` into `out`; false (and `out` untouched) if
/// the frame is too short. For values larger than a register: an
/// `Option<[u8; 16]>` carries undefined bytes when `None`, and LLVM may
/// compute with whatever register stands in for them (a packet pointer,
/// say) on a path the verifier then refuses.
#[inline(always)]
pub fn read_into<T: Copy>(ctx: &XdpContext, off: usize, out: &mut T) -> bool {
    match ptr_at::<T>(ctx, off) {
        Some(ptr) => {
            // SAFETY: as in `read_at`.
            *out = unsafe { ptr.read_unaligned() };
            true
        }
        None => false,
    }
}

/// Writes `value` at byte `off`; `None` if the frame is too short.
#[inline(always)]
pub fn write_at<T: Copy>(ctx: &XdpContext, off: usize, value: T) -> Option<()> {
    // SAFETY: as in `read_at`; XDP frames are writable.
    ptr_at::<T>(ctx, off).map(|ptr| unsafe { ptr.write_unaligned(value) })
}

/// Frame length in bytes.
#[inline(always)]
pub fn frame_len(ctx: &XdpContext) -> usize {
    ctx.data_end() - ctx.data()
}

/// True when `len` bytes starting at `off` lie inside the frame.
#[inline(always)]
pub fn fits(ctx: &XdpContext, off: usize, len: usize) -> bool {
    ctx.data() + off + len <= ctx.data_end()
}

/// The `N` bytes at `off`, to read and change in place without a stack copy.
#[inline(always)]
pub fn bytes_at<'a, const N: usize>(ctx: &XdpContext, off: usize) -> Option<&'a mut [u8; N]> {
    // SAFETY: `ptr_at` checked the bounds; byte arrays have alignment 1; the
    // frame outlives the program run and nothing else aliases it during it.
    ptr_at::<[u8; N]>(ctx, off).map(|ptr| unsafe { &mut *ptr })
}
