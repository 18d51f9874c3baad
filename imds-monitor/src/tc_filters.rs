//! clsact filters and the clsact qdisc over a synchronous rtnetlink socket
//! (kernels before 6.6, where TC programs are attached as netlink filters).
//!
//! `Kernel::attach` is synchronous and runs inside the daemon's
//! current-thread tokio runtime (no `block_on` there), so this uses a plain
//! blocking `netlink-sys` socket (rtnetlink's own, re-exported as
//! `rtnetlink::sys`) with `netlink-packet-route` messages: each call is one
//! request and its answer, on a socket of its own.

use std::io;

use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    tc::{TcAttribute, TcFilterBpf, TcFilterBpfOption, TcHandle, TcHeader, TcMessage, TcOption},
};
use rtnetlink::{
    packet_core::{
        NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    },
    sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE},
};

/// Which clsact hook: the qdisc's ingress or egress filter block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Ingress,
    Egress,
}

impl Hook {
    /// `TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS / TC_H_MIN_EGRESS)`.
    fn parent(self) -> TcHandle {
        TcHandle {
            major: TcHandle::CLSACT.major,
            minor: match self {
                Hook::Ingress => TcHandle::MIN_INGRESS,
                Hook::Egress => TcHandle::MIN_EGRESS,
            },
        }
    }
}

/// One entry of a filter dump. The kernel also lists each priority's
/// filter chain head (handle 0, no options): its priority is taken all the
/// same, so it is listed too, without a program name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    /// The filter's priority (`tc`'s `pref`).
    pub priority: u16,
    /// The protocol it matches (network byte order, as in `tcm_info`).
    pub protocol: u16,
    /// The filter's handle within its priority (0 for a chain head).
    pub handle: u32,
    /// `bpf`, `u32`, `flower`, ...
    pub kind: String,
    /// A `bpf` filter's program name (`TCA_BPF_NAME`).
    pub program: Option<String>,
}

impl Filter {
    /// A `bpf` filter running the program `name`.
    pub fn runs(&self, name: &str) -> bool {
        self.handle != 0 && self.kind == TcFilterBpf::KIND && self.program.as_deref() == Some(name)
    }
}

/// A priority none of `filters` uses: just in front of the first (where
/// the kernel puts a filter added without one), else the lowest free one;
/// 0 (the kernel picks) if all are taken.
pub fn free_priority(filters: &[Filter]) -> u16 {
    match filters.iter().map(|f| f.priority).min() {
        Some(first) if first > 1 => first - 1,
        Some(_) => (1..=u16::MAX)
            .find(|p| filters.iter().all(|f| f.priority != *p))
            .unwrap_or(0),
        None => 0,
    }
}

/// The filters on `hook` of `ifindex`'s clsact qdisc (none without one).
pub fn list(ifindex: u32, hook: Hook) -> io::Result<Vec<Filter>> {
    let request = tc_message(ifindex, TcHandle::UNSPEC, hook.parent(), 0, vec![]);
    let mut filters = Vec::new();
    exchange(
        RouteNetlinkMessage::GetTrafficFilter(request),
        NLM_F_REQUEST | NLM_F_DUMP,
        |message| {
            if let RouteNetlinkMessage::NewTrafficFilter(tc) = message {
                filters.push(filter(tc));
            }
        },
    )?;
    Ok(filters)
}

/// Deletes exactly one `bpf` filter: the one at `priority`, `protocol` and
/// `handle` on `hook` (a handle of 0 would delete the whole priority, so it
/// is refused).
pub fn delete(ifindex: u32, hook: Hook, filter: &Filter) -> io::Result<()> {
    if filter.handle == 0 || filter.kind != TcFilterBpf::KIND {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a single bpf filter: {filter:?}"),
        ));
    }
    let request = tc_message(
        ifindex,
        TcHandle::from(filter.handle),
        hook.parent(),
        (u32::from(filter.priority) << 16) | u32::from(filter.protocol),
        // The kernel refuses the request if the filter there is of another kind.
        vec![TcAttribute::Kind(TcFilterBpf::KIND.to_owned())],
    );
    exchange(
        RouteNetlinkMessage::DelTrafficFilter(request),
        NLM_F_REQUEST | NLM_F_ACK,
        |_| {},
    )
}

/// Deletes the clsact qdisc of `ifindex` (`tc qdisc del dev IFACE clsact`),
/// and with it every filter on it.
pub fn delete_clsact(ifindex: u32) -> io::Result<()> {
    let request = tc_message(
        ifindex,
        TcHandle {
            major: TcHandle::CLSACT.major,
            minor: 0,
        },
        TcHandle::CLSACT,
        0,
        vec![TcAttribute::Kind("clsact".to_owned())],
    );
    exchange(
        RouteNetlinkMessage::DelQueueDiscipline(request),
        NLM_F_REQUEST | NLM_F_ACK,
        |_| {},
    )
}

fn tc_message(
    ifindex: u32,
    handle: TcHandle,
    parent: TcHandle,
    info: u32,
    attributes: Vec<TcAttribute>,
) -> TcMessage {
    TcMessage::from_parts(
        TcHeader {
            family: AddressFamily::Unspec,
            index: i32::try_from(ifindex).unwrap_or(i32::MAX),
            handle,
            parent,
            info,
        },
        attributes,
    )
}

fn filter(tc: TcMessage) -> Filter {
    let (header, attributes) = tc.into_parts();
    let mut kind = String::new();
    let mut program = None;
    for attribute in attributes {
        match attribute {
            TcAttribute::Kind(k) => kind = k,
            TcAttribute::Options(options) => {
                for option in options {
                    if let TcOption::Bpf(TcFilterBpfOption::ProgName(name)) = option {
                        program = Some(name);
                    }
                }
            }
            _ => {}
        }
    }
    Filter {
        priority: (header.info >> 16) as u16,
        protocol: (header.info & 0xffff) as u16,
        handle: u32::from(header.handle),
        kind,
        program,
    }
}

/// Sends one request and reads its answer up to the acknowledgement (or the
/// end of the dump), handing each message to `each`. A kernel error is
/// returned as the `io::Error` of its errno.
fn exchange(
    request: RouteNetlinkMessage,
    flags: u16,
    mut each: impl FnMut(RouteNetlinkMessage),
) -> io::Result<()> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = 1;
    let mut message = NetlinkMessage::new(header, NetlinkPayload::from(request));
    message.finalize();
    let mut buf = vec![0; message.buffer_len()];
    message.serialize(&mut buf);
    socket.send(&buf, 0)?;
    let mut received = Vec::with_capacity(64 * 1024);
    loop {
        received.clear();
        socket.recv(&mut received, 0)?;
        let mut offset = 0;
        while offset < received.len() {
            let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&received[offset..])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            let length = reply.header.length as usize;
            if length == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a netlink message of length 0",
                ));
            }
            offset += length.next_multiple_of(4);
            if reply.header.sequence_number != 1 {
                continue;
            }
            match reply.payload {
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) if e.code.is_none() => return Ok(()),
                NetlinkPayload::Error(e) => return Err(e.to_io()),
                NetlinkPayload::InnerMessage(message) => each(message),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bpf(priority: u16, handle: u32, program: &str) -> Filter {
        Filter {
            priority,
            protocol: 0x0300,
            handle,
            kind: TcFilterBpf::KIND.to_owned(),
            program: Some(program.to_owned()),
        }
    }

    #[test]
    fn a_dumped_bpf_filter_is_read_with_its_priority_handle_and_program() {
        let tc = tc_message(
            5,
            TcHandle::from(1),
            Hook::Egress.parent(),
            (49152 << 16) | 0x0300,
            vec![
                TcAttribute::Kind("bpf".to_owned()),
                TcAttribute::Options(vec![
                    TcOption::Bpf(TcFilterBpfOption::ProgFd(4)),
                    TcOption::Bpf(TcFilterBpfOption::ProgName("imds_classify".to_owned())),
                ]),
            ],
        );
        let filter = filter(tc);
        assert_eq!(filter, bpf(49152, 1, "imds_classify"));
        assert!(filter.runs("imds_classify"));
        assert!(!filter.runs("imds_responses"));
    }

    #[test]
    fn a_chain_head_runs_nothing() {
        let head = Filter {
            handle: 0,
            program: None,
            ..bpf(49152, 0, "")
        };
        assert!(!head.runs("imds_classify"));
        assert_eq!(
            delete(1, Hook::Egress, &head).unwrap_err().kind(),
            io::ErrorKind::InvalidInput,
            "a handle of 0 would delete the whole priority"
        );
    }

    #[test]
    fn the_free_priority_is_in_front_of_the_first_or_the_lowest_free_one() {
        assert_eq!(free_priority(&[]), 0);
        assert_eq!(free_priority(&[bpf(49152, 1, "a")]), 49151);
        assert_eq!(
            free_priority(&[bpf(49151, 1, "a"), bpf(49152, 1, "b")]),
            49150
        );
        assert_eq!(free_priority(&[bpf(1, 1, "a"), bpf(3, 1, "b")]), 2);
        assert_eq!(free_priority(&[bpf(1, 1, "a"), bpf(2, 1, "b")]), 3);
    }

    #[test]
    fn the_hooks_are_the_clsact_ingress_and_egress() {
        assert_eq!(u32::from(Hook::Ingress.parent()), 0xffff_fff2);
        assert_eq!(u32::from(Hook::Egress.parent()), 0xffff_fff3);
    }
}
