//! The one accessor for packet memory. Every read and write of the frame goes
//! through [`ptr_at`], which proves to the verifier that `[off, off + size)`
//! lies inside `[data, data_end)`.

use aya_ebpf::programs::XdpContext;

/// Offsets beyond this are never valid; the bound lets the verifier track
/// variable offsets (IHL, IPv6 extension headers) without overflow worries.
pub const MAX_OFFSET: usize = 512;

/// A pointer to a `T` at byte `off` of the frame, or `None` if the frame is
/// too short.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if off > MAX_OFFSET || start + off + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *const T)
}

/// Copies the `T` at byte `off` out of the frame. `T` must be a plain byte
/// layout (the network-types headers and byte arrays are).
#[inline(always)]
pub fn read_at<T: Copy>(ctx: &XdpContext, off: usize) -> Option<T> {
    // SAFETY: `ptr_at` checked that the whole `T` lies inside the frame; the
    // read is unaligned because headers sit at arbitrary offsets.
    ptr_at::<T>(ctx, off).map(|ptr| unsafe { ptr.read_unaligned() })
}
