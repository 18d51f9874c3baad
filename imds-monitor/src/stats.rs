//! The kernel's counters, summed over CPUs.

use anyhow::{Context as _, Result};
use aya::maps::{MapData, PerCpuArray};
use imds_monitor_common::{class::RequestClass, event::stat};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelStats {
    pub lost_events: u64,
    pub retransmits: u64,
    pub sequence_gaps: u64,
    pub truncated_packets: u64,
    pub responses: u64,
    pub responses_lost: u64,
    /// Segments of connections without state that did not start a request.
    pub untracked_segments: u64,
    /// Packets to an endpoint not readable as one TCP segment.
    pub unreadable_packets: u64,
    /// New connections not followed because the flow table was full.
    pub flow_table_full: u64,
    pub requests: [u64; RequestClass::COUNT],
}

pub fn read(map: &PerCpuArray<MapData, u64>) -> Result<KernelStats> {
    let sum = |index: u32| -> Result<u64> {
        let values = map.get(&index, 0).context("reading kernel counters")?;
        Ok(values.iter().sum())
    };
    let mut stats = KernelStats {
        lost_events: sum(stat::LOST_EVENTS)?,
        retransmits: sum(stat::RETRANSMITS)?,
        sequence_gaps: sum(stat::SEQUENCE_GAPS)?,
        truncated_packets: sum(stat::TRUNCATED_PACKETS)?,
        responses: sum(stat::RESPONSES)?,
        responses_lost: sum(stat::RESPONSES_LOST)?,
        untracked_segments: sum(stat::UNTRACKED_SEGMENTS)?,
        unreadable_packets: sum(stat::UNREADABLE_PACKETS)?,
        flow_table_full: sum(stat::FLOW_TABLE_FULL)?,
        ..KernelStats::default()
    };
    for class in RequestClass::ALL {
        stats.requests[class as usize] = sum(stat::CLASS_BASE + class as u32)?;
    }
    Ok(stats)
}
