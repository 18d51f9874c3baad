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

/// Why a request was classified [`RequestClass::Invalid`].
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
        }
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
