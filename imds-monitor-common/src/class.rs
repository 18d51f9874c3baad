//! What the classifier decides about a request, shared by kernel and daemon.

/// The class of one IMDS HTTP request. Stored as `u8` in events and maps.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RequestClass {
    /// GET or HEAD without the token header: IMDSv1.
    V1Get = 0,
    /// `PUT /latest/api/token` with a valid TTL header: an IMDSv2 session starts.
    V2TokenPut = 1,
    /// GET or HEAD with `X-aws-ec2-metadata-token`: IMDSv2.
    V2Get = 2,
    /// A request IMDS rejects: see [`InvalidReason`].
    Invalid = 3,
    /// A GCP, Azure or Oracle metadata client probing the same address: not IMDSv1 use.
    OtherCloud = 4,
    /// The head did not complete within what the classifier inspects, or the
    /// connection ended mid-head. Never counted as v1.
    Incomplete = 5,
}

impl RequestClass {
    pub const COUNT: usize = 6;
    pub const ALL: [Self; Self::COUNT] = [
        Self::V1Get,
        Self::V2TokenPut,
        Self::V2Get,
        Self::Invalid,
        Self::OtherCloud,
        Self::Incomplete,
    ];

    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::V1Get),
            1 => Some(Self::V2TokenPut),
            2 => Some(Self::V2Get),
            3 => Some(Self::Invalid),
            4 => Some(Self::OtherCloud),
            5 => Some(Self::Incomplete),
            _ => None,
        }
    }

    /// The name used in events (`imds.class`) and policy files.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::V1Get => "v1_get",
            Self::V2TokenPut => "v2_token_put",
            Self::V2Get => "v2_get",
            Self::Invalid => "invalid",
            Self::OtherCloud => "other_cloud",
            Self::Incomplete => "incomplete",
        }
    }

    /// `imds.version`: which IMDS protocol version the request belongs to.
    pub const fn version(self) -> &'static str {
        match self {
            Self::V1Get => "v1",
            Self::V2TokenPut | Self::V2Get => "v2",
            _ => "unknown",
        }
    }
}

/// Why a request was classified [`RequestClass::Invalid`] (1 to 7), or
/// [`RequestClass::Incomplete`] (from 8): what kept the classifier from
/// judging it. Enforce mode resets those (it fails closed).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InvalidReason {
    None = 0,
    /// A method other than GET, HEAD or PUT (or not in upper case).
    Method = 1,
    /// A PUT to a path other than the token path.
    PutNotToken = 2,
    /// `PUT /<date>/api/token`: IMDS answers 403.
    DatedTokenPath = 3,
    /// A token PUT carrying X-Forwarded-For: IMDS answers 403 (anti-SSRF).
    ForwardedFor = 4,
    /// A token PUT without the TTL header: IMDS answers 400.
    MissingTtl = 5,
    /// A TTL outside 1..=21600 or not a number: IMDS answers 400.
    TtlOutOfRange = 6,
    /// Bytes that are not an HTTP request head.
    Malformed = 7,
    /// The connection ended (FIN or RST) inside a request head: IMDS never
    /// got a whole request, so nothing needs dropping.
    ConnectionClosed = 8,
    /// The head ran past [`crate::http::MAX_HEAD_BYTES`].
    HeadTooLong = 9,
    /// A packet's payload ran past what one packet's scan reads.
    PacketTooLong = 10,
    /// A packet's bytes needed more parser steps than one packet gets.
    TooManySteps = 11,
    /// Bytes before this segment were never seen (a sequence gap).
    SequenceGap = 12,
    /// A segment of a connection the classifier holds no state for (its
    /// entry was evicted, or it was open before the monitor started) that
    /// does not start a request head.
    UntrackedConnection = 13,
    /// More bytes on a connection whose stream could not be followed (after
    /// junk, or after one of the reasons above).
    Unfollowed = 14,
    /// Data in a SYN (TCP Fast Open).
    SynData = 15,
    /// An IP fragment, or IPv6 extension headers the classifier does not follow.
    IpHeader = 16,
    /// A new connection when the flow table is full: not followed, so not let through.
    FlowTableFull = 17,
}

impl InvalidReason {
    pub const fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Method,
            2 => Self::PutNotToken,
            3 => Self::DatedTokenPath,
            4 => Self::ForwardedFor,
            5 => Self::MissingTtl,
            6 => Self::TtlOutOfRange,
            7 => Self::Malformed,
            8 => Self::ConnectionClosed,
            9 => Self::HeadTooLong,
            10 => Self::PacketTooLong,
            11 => Self::TooManySteps,
            12 => Self::SequenceGap,
            13 => Self::UntrackedConnection,
            14 => Self::Unfollowed,
            15 => Self::SynData,
            16 => Self::IpHeader,
            17 => Self::FlowTableFull,
            _ => Self::None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Method => "method",
            Self::PutNotToken => "put_not_token",
            Self::DatedTokenPath => "dated_token_path",
            Self::ForwardedFor => "x_forwarded_for",
            Self::MissingTtl => "missing_ttl",
            Self::TtlOutOfRange => "ttl_out_of_range",
            Self::Malformed => "malformed",
            Self::ConnectionClosed => "connection_closed",
            Self::HeadTooLong => "head_too_long",
            Self::PacketTooLong => "packet_too_long",
            Self::TooManySteps => "too_many_steps",
            Self::SequenceGap => "sequence_gap",
            Self::UntrackedConnection => "untracked_connection",
            Self::Unfollowed => "unfollowed",
            Self::SynData => "syn_data",
            Self::IpHeader => "ip_header",
            Self::FlowTableFull => "flow_table_full",
        }
    }

    /// Every reason, for tests and docs.
    pub const ALL: [Self; 18] = [
        Self::None,
        Self::Method,
        Self::PutNotToken,
        Self::DatedTokenPath,
        Self::ForwardedFor,
        Self::MissingTtl,
        Self::TtlOutOfRange,
        Self::Malformed,
        Self::ConnectionClosed,
        Self::HeadTooLong,
        Self::PacketTooLong,
        Self::TooManySteps,
        Self::SequenceGap,
        Self::UntrackedConnection,
        Self::Unfollowed,
        Self::SynData,
        Self::IpHeader,
        Self::FlowTableFull,
    ];

    /// Whether a request of this reason, in enforce mode, must not reach
    /// IMDS: everything unjudged except a head its client abandoned.
    pub const fn fails_closed(self) -> bool {
        (self as u8) > Self::ConnectionClosed as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_round_trip_and_have_distinct_names() {
        let mut names = Vec::new();
        for (i, reason) in InvalidReason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, i);
            assert_eq!(InvalidReason::from_u8(i as u8), *reason);
            names.push(reason.as_str());
        }
        names.sort();
        names.dedup();
        assert_eq!(names.len(), InvalidReason::ALL.len());
        assert_eq!(InvalidReason::from_u8(200), InvalidReason::None);
        assert!(!InvalidReason::ConnectionClosed.fails_closed());
        assert!(InvalidReason::HeadTooLong.fails_closed());
        assert!(InvalidReason::IpHeader.fails_closed());
        assert!(!InvalidReason::Malformed.fails_closed());
    }
}

/// What happened to the request's packets.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    Allowed = 0,
    Alerted = 1,
    Dropped = 2,
}

impl Verdict {
    pub const fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Alerted,
            2 => Self::Dropped,
            _ => Self::Allowed,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Alerted => "alerted",
            Self::Dropped => "dropped",
        }
    }
}
