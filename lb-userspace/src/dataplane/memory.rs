//! What the data path's tables cost the kernel for a set of [`Sizes`]:
//! every map of the embedded object, its entry count as the loader sets it
//! ([`Sizes::resized_maps`]), times what the kernel allocates per entry.
//! Pure: the object's map definitions are read from its bytes, nothing is
//! loaded. `lb check` prints the figure; `lb run` refuses a file whose
//! tables the host cannot hold (see `host::problems`).
//!
//! Per-entry costs follow the kernel's allocators: arrays hold each value
//! rounded up to 8 bytes (per CPU for per-CPU arrays); hash maps preallocate
//! every element with a 48-byte header (`struct htab_elem`, the LRU node
//! inside it) before key and value, each rounded up to 8; ring buffers hold
//! their bytes. Tries and the devmap allocate on insert and are counted at
//! their maximum. The result is a close estimate, not the kernel's own
//! accounting (which adds per-map and per-CPU bookkeeping, under 1 %).

use super::Sizes;

/// The kernel's bytes per preallocated hash element beyond key and value.
const HTAB_ELEM_HEADER: u64 = 48;

/// Kernel memory of the tables, by the part that grows with the sizes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableMemory {
    /// `MAGLEV`: two rows of `ring_size` slots per service.
    pub maglev: u64,
    /// The connection tables (`CONNS`, `CONNS_V4`).
    pub connections: u64,
    /// Everything else (backends, services, guard, attack, counters, ...).
    pub other: u64,
}

impl TableMemory {
    /// All of it.
    pub fn total(&self) -> u64 {
        self.maglev + self.connections + self.other
    }

    /// The tables of the embedded object with `sizes` on a host of `cpus`
    /// CPUs.
    pub fn of(sizes: &Sizes, cpus: u32) -> Self {
        Self::of_object(super::OBJECT, sizes, cpus)
    }

    /// As [`TableMemory::of`], for another build of the object. An object
    /// that does not parse costs nothing here (the loader reports it).
    pub fn of_object(object: &[u8], sizes: &Sizes, cpus: u32) -> Self {
        let mut memory = Self::default();
        let Ok(parsed) = aya_obj::Object::parse(object) else {
            return memory;
        };
        let resized = sizes.resized_maps();
        for (name, map) in &parsed.maps {
            let entries = if name == lb_common::map_names::MAGLEV {
                // Counted wide: a size past u32 is what the estimate exists
                // to catch.
                u64::from(sizes.services) * 2 * u64::from(sizes.ring_size)
            } else {
                u64::from(
                    resized
                        .iter()
                        .find(|(resized, _)| resized == name)
                        .map_or(map.max_entries(), |(_, entries)| *entries),
                )
            };
            let bytes = map_bytes(
                map.map_type(),
                map.key_size(),
                map.value_size(),
                entries,
                cpus,
            );
            match name.as_str() {
                lb_common::map_names::MAGLEV => memory.maglev += bytes,
                lb_common::map_names::CONNS | lb_common::map_names::CONNS_V4 => {
                    memory.connections += bytes;
                }
                _ => memory.other += bytes,
            }
        }
        memory
    }
}

/// One map's bytes: `entries` of `key` + `value` bytes, by map type.
fn map_bytes(map_type: u32, key: u32, value: u32, entries: u64, cpus: u32) -> u64 {
    use aya_obj::generated::bpf_map_type as t;
    let round8 = |n: u32| u64::from(n.div_ceil(8) * 8);
    let cpus = u64::from(cpus.max(1));
    match map_type {
        x if x == t::BPF_MAP_TYPE_ARRAY as u32 || x == t::BPF_MAP_TYPE_PROG_ARRAY as u32 => {
            entries * round8(value)
        }
        x if x == t::BPF_MAP_TYPE_PERCPU_ARRAY as u32 => entries * round8(value) * cpus,
        x if x == t::BPF_MAP_TYPE_PERCPU_HASH as u32
            || x == t::BPF_MAP_TYPE_LRU_PERCPU_HASH as u32 =>
        {
            entries * (HTAB_ELEM_HEADER + round8(key) + round8(value) * cpus)
        }
        x if x == t::BPF_MAP_TYPE_RINGBUF as u32 => entries,
        _ => entries * (HTAB_ELEM_HEADER + round8(key) + round8(value)),
    }
}

/// Bytes as people read them: `512.0 MiB`.
#[allow(clippy::cast_precision_loss, reason = "a figure to read")]
pub fn human(bytes: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if bytes as f64 >= 1024.0 * MIB {
        format!("{:.1} GiB", bytes as f64 / (1024.0 * MIB))
    } else {
        format!("{:.1} MiB", bytes as f64 / MIB)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maglev_grows_with_services_times_ring_size() {
        let small = Sizes {
            services: 10,
            ..Sizes::default()
        };
        let large = Sizes {
            services: 1000,
            ..Sizes::default()
        };
        let (small, large) = (TableMemory::of(&small, 2), TableMemory::of(&large, 2));
        // Two rows of 65,537 slots per service; the kernel rounds each
        // array element up to 8 bytes, so a four-byte slot takes eight.
        assert_eq!(small.maglev, 10 * 2 * 65_537 * 8);
        assert_eq!(large.maglev, 1000 * 2 * 65_537 * 8);
        assert_eq!(small.connections, large.connections);
        assert!(large.other > small.other, "per-service arrays grow too");
        let huge = Sizes {
            services: 1_000_000,
            ring_size: 1_000_003,
            ..Sizes::default()
        };
        assert_eq!(
            TableMemory::of(&huge, 2).maglev,
            1_000_000 * 2 * 1_000_003 * 8,
            "past u32 entries, not saturated"
        );
    }

    #[test]
    fn the_connection_tables_are_preallocated_elements() {
        let sizes = Sizes {
            connections: 1 << 20,
            ..Sizes::default()
        };
        let memory = TableMemory::of(&sizes, 2);
        let per_entry = memory.connections / (2 << 20);
        // A 48-byte header, a key of 16 or 40 bytes, a value of 24 or more.
        assert!(
            (80..=160).contains(&per_entry),
            "{per_entry} bytes per entry"
        );
    }

    #[test]
    fn human_figures() {
        assert_eq!(human(512 * 1024 * 1024), "512.0 MiB");
        assert_eq!(human(3 * 1024 * 1024 * 1024 / 2), "1.5 GiB");
    }
}
