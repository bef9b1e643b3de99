//! Kernel time as the eBPF programs read it.

use idlecut_core::events::Nanos;
use idlecut_ebpf::SocketClocks;

/// Kernel time as the eBPF programs see it (`bpf_ktime_get_ns` is CLOCK_MONOTONIC).
pub fn monotonic_now() -> Nanos {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and output pointer; CLOCK_MONOTONIC cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let seconds = u64::try_from(now.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(now.tv_nsec).unwrap_or(0);
    seconds.saturating_mul(1_000_000_000).saturating_add(nanos)
}

/// The length of a jiffy, the kernel's tick, in nanoseconds: the resolution of
/// CLOCK_MONOTONIC_COARSE, which advances once a tick. None if the kernel does not say.
pub fn tick_ns() -> Option<u64> {
    let mut resolution = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and output pointer.
    let status = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut resolution) };
    if status != 0 || resolution.tv_sec != 0 {
        return None;
    }
    u64::try_from(resolution.tv_nsec).ok().filter(|&ns| ns > 0)
}

/// The socket clocks' timing for a kernel whose jiffy lasts `tick_ns` and programs that report
/// idle gaps from `min_idle_gap_ns` on (`offsets` carries where the clocks are): the gap in
/// whole jiffies less one, so that a quiet event is never one that ends a gap, and a refresh
/// period of a power of two jiffies between half a second and a second.
pub fn socket_clocks(offsets: SocketClocks, tick_ns: u64, min_idle_gap_ns: u64) -> SocketClocks {
    let min_gap_jiffies = (min_idle_gap_ns / tick_ns).saturating_sub(1);
    SocketClocks {
        tick_ns,
        min_gap_jiffies: u32::try_from(min_gap_jiffies).unwrap_or(u32::MAX),
        refresh_shift: (1_000_000_000 / tick_ns).max(1).ilog2(),
        ..offsets
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tick_is_read_from_the_coarse_clock() {
        let tick = tick_ns().expect("Linux tells CLOCK_MONOTONIC_COARSE's resolution");
        // CONFIG_HZ is 100 to 1000 on the kernels that exist.
        assert!((1_000_000..=10_000_000).contains(&tick), "{tick}");
    }

    #[test]
    fn quiet_events_never_end_a_gap_and_the_state_is_refreshed_within_a_second() {
        let offsets = SocketClocks {
            rcv_tstamp: 1,
            ..SocketClocks::unknown()
        };
        for (hz, period_jiffies) in [(100, 64), (250, 128), (300, 256), (1000, 512)] {
            let tick = 1_000_000_000 / hz;
            let clocks = socket_clocks(offsets, tick, 10_000_000_000);
            assert_eq!(clocks.tick_ns, tick);
            assert_eq!(clocks.rcv_tstamp, 1, "the offsets are kept");
            assert_eq!(u64::from(clocks.min_gap_jiffies), 10 * hz - 1);
            assert_eq!(1u32 << clocks.refresh_shift, period_jiffies, "HZ={hz}");
            let period_ns = u64::from(period_jiffies) * tick;
            assert!(
                (500_000_000..=1_000_000_000).contains(&period_ns),
                "HZ={hz}"
            );
        }
        // A gap shorter than two ticks: no event is quiet (each takes the full path).
        assert_eq!(
            socket_clocks(offsets, 4_000_000, 5_000_000).min_gap_jiffies,
            0
        );
        assert_eq!(
            socket_clocks(offsets, 4_000_000, u64::MAX).min_gap_jiffies,
            u32::MAX
        );
    }
}
