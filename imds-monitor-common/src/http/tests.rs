use super::*;
use crate::class::{InvalidReason as R, RequestClass as C};

/// Feeds `input` whole and returns the outcome of the first request.
fn parse(input: &[u8]) -> (Step, RequestParser) {
    let mut p = RequestParser::new();
    let (step, _) = p.feed_slice(input);
    (step, p)
}

fn class_of(input: &[u8]) -> (C, R) {
    let (step, p) = parse(input);
    assert_eq!(
        step,
        Step::Complete,
        "head not complete: {:?}",
        core::str::from_utf8(input)
    );
    p.classify()
}

const V1: &[u8] = b"GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: 169.254.169.254\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n";
const PUT: &[u8] = b"PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\nX-aws-ec2-metadata-token-ttl-seconds: 21600\r\n\r\n";
const V2: &[u8] = b"GET /latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\nX-aws-ec2-metadata-token: AQAEAFake==\r\n\r\n";

#[test]
fn classification_table() {
    #[rustfmt::skip]
    let cases: &[(&str, &[u8], C, R)] = &[
        ("curl v1 get", V1, C::V1Get, R::None),
        ("token put", PUT, C::V2TokenPut, R::None),
        ("v2 get", V2, C::V2Get, R::None),
        ("head v1", b"HEAD /latest/meta-data/ HTTP/1.1\r\n\r\n", C::V1Get, R::None),
        ("head v2", b"HEAD / HTTP/1.1\r\nx-aws-ec2-metadata-token: t\r\n\r\n", C::V2Get, R::None),
        ("botocore lower-case headers",
            b"PUT /latest/api/token HTTP/1.1\r\nhost: 169.254.169.254\r\nx-aws-ec2-metadata-token-ttl-seconds: 21600\r\ncontent-length: 0\r\n\r\n",
            C::V2TokenPut, R::None),
        ("mixed-case token header", b"GET /latest/meta-data/ HTTP/1.1\r\nX-AWS-EC2-Metadata-Token: x\r\n\r\n", C::V2Get, R::None),
        // The TTL header's name starts with the token header's name: a TTL
        // header alone on a GET is not a token.
        ("ttl header is not a token header", b"GET /latest/meta-data/ HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n", C::V1Get, R::None),
        ("token header prefix only", b"GET / HTTP/1.1\r\nX-aws-ec2-metadata-tok: x\r\n\r\n", C::V1Get, R::None),
        ("token header longer name", b"GET / HTTP/1.1\r\nX-aws-ec2-metadata-tokens: x\r\n\r\n", C::V1Get, R::None),
        ("space before colon is no header", b"GET / HTTP/1.1\r\nX-aws-ec2-metadata-token : x\r\n\r\n", C::V1Get, R::None),
        ("token in a value is no header", b"GET / HTTP/1.1\r\nX-Note: X-aws-ec2-metadata-token: x\r\n\r\n", C::V1Get, R::None),
        ("LF-only line ends", b"GET /latest/meta-data/ HTTP/1.1\nX-aws-ec2-metadata-token: t\n\n", C::V2Get, R::None),
        ("LF-only v1", b"GET /latest/user-data HTTP/1.1\nHost: x\n\n", C::V1Get, R::None),
        ("no headers at all", b"GET /latest/meta-data/ HTTP/1.0\r\n\r\n", C::V1Get, R::None),
        ("leading blank lines", b"\r\n\r\nGET / HTTP/1.1\r\n\r\n", C::V1Get, R::None),
        ("put without ttl", b"PUT /latest/api/token HTTP/1.1\r\nHost: x\r\n\r\n", C::Invalid, R::MissingTtl),
        ("ttl zero", b"PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 0\r\n\r\n", C::Invalid, R::TtlOutOfRange),
        ("ttl too big", b"PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 21601\r\n\r\n", C::Invalid, R::TtlOutOfRange),
        ("ttl huge", b"PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 99999999999999999999\r\n\r\n", C::Invalid, R::TtlOutOfRange),
        ("ttl not a number", b"PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 6O\r\n\r\n", C::Invalid, R::TtlOutOfRange),
        ("ttl empty", b"PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds:\r\n\r\n", C::Invalid, R::TtlOutOfRange),
        ("ttl two numbers", b"PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 1 2\r\n\r\n", C::Invalid, R::TtlOutOfRange),
        ("ttl trailing space", b"PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 1 \r\n\r\n", C::V2TokenPut, R::None),
        ("ttl one", b"PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 1\r\n\r\n", C::V2TokenPut, R::None),
        ("put with x-forwarded-for",
            b"PUT /latest/api/token HTTP/1.1\r\nX-Forwarded-For: 203.0.113.9\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n",
            C::Invalid, R::ForwardedFor),
        ("dated token path", b"PUT /2021-03-23/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n", C::Invalid, R::DatedTokenPath),
        ("put elsewhere", b"PUT /latest/meta-data/ HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n", C::Invalid, R::PutNotToken),
        ("put deeper token path", b"PUT /a/b/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n", C::Invalid, R::PutNotToken),
        ("put relative token path", b"PUT latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n", C::Invalid, R::PutNotToken),
        ("post", b"POST /latest/api/token HTTP/1.1\r\n\r\n", C::Invalid, R::Method),
        ("lower-case method", b"get /latest/meta-data/ HTTP/1.1\r\n\r\n", C::Invalid, R::Method),
        ("overlong method", b"GETGETGETGET / HTTP/1.1\r\n\r\n", C::Invalid, R::Method),
        ("gcp client", b"GET /computeMetadata/v1/instance/id HTTP/1.1\r\nMetadata-Flavor: Google\r\n\r\n", C::OtherCloud, R::None),
        ("azure client", b"GET /metadata/instance?api-version=2021-02-01 HTTP/1.1\r\nMetadata: true\r\n\r\n", C::OtherCloud, R::None),
        ("oracle client", b"GET /opc/v2/instance/ HTTP/1.1\r\nAuthorization: Bearer Oracle\r\n\r\n", C::OtherCloud, R::None),
        ("gcp value case-insensitive", b"GET / HTTP/1.1\r\nmetadata-flavor: google\r\n\r\n", C::OtherCloud, R::None),
        ("wrong flavor is v1", b"GET / HTTP/1.1\r\nMetadata-Flavor: Googlers\r\n\r\n", C::V1Get, R::None),
        ("azure false is v1", b"GET / HTTP/1.1\r\nMetadata: false\r\n\r\n", C::V1Get, R::None),
        ("other authorization is v1", b"GET / HTTP/1.1\r\nAuthorization: Bearer abc\r\n\r\n", C::V1Get, R::None),
        ("aws token wins over other-cloud header", b"GET / HTTP/1.1\r\nMetadata: true\r\nX-aws-ec2-metadata-token: t\r\n\r\n", C::V2Get, R::None),
        ("header line without colon skipped", b"GET / HTTP/1.1\r\nGarbage\r\nX-aws-ec2-metadata-token: t\r\n\r\n", C::V2Get, R::None),
        ("folded line", b"GET / HTTP/1.1\r\nX-A: b\r\n  c\r\n\r\n", C::V1Get, R::None),
    ];
    for (name, input, class, reason) in cases {
        assert_eq!(class_of(input), (*class, *reason), "case {name:?}");
    }
}

#[test]
fn records_method_path_and_ttl() {
    let (_, p) = parse(PUT);
    assert_eq!(p.method(), b"PUT");
    assert_eq!(p.path(), b"/latest/api/token");
    assert_eq!(p.ttl, 21600);
    assert_eq!(p.flags & flag::PATH_TRUNCATED, 0);
}

#[test]
fn never_keeps_header_values() {
    let (_, p) = parse(V2);
    let bytes: &[u8] = unsafe {
        core::slice::from_raw_parts(
            (&p as *const RequestParser).cast::<u8>(),
            size_of::<RequestParser>(),
        )
    };
    assert!(
        !bytes.windows(6).any(|w| w == b"AQAEAF"),
        "token bytes kept in parser state"
    );
}

#[test]
fn very_long_path_is_truncated_and_flagged() {
    const PREFIX: &[u8] = b"/latest/meta-data/tags/instance/";
    let mut req = b"GET ".to_vec();
    req.extend_from_slice(PREFIX);
    req.extend(core::iter::repeat_n(b'k', 600));
    req.extend_from_slice(b" HTTP/1.1\r\n\r\n");
    let (step, p) = parse(&req);
    assert_eq!(step, Step::Complete);
    assert_eq!(p.classify().0, C::V1Get);
    assert_eq!(p.path_len as usize, PREFIX.len() + 600);
    assert_eq!(p.path().len(), PATH_CAP);
    assert_ne!(p.flags & flag::PATH_TRUNCATED, 0);
}

#[test]
fn overlong_head_is_overflow() {
    let mut req = b"GET / HTTP/1.1\r\nX-Pad: ".to_vec();
    req.extend(core::iter::repeat_n(b'a', MAX_HEAD_BYTES as usize));
    req.extend_from_slice(b"\r\nX-aws-ec2-metadata-token: t\r\n\r\n");
    assert_eq!(parse(&req).0, Step::Overflow);
}

#[test]
fn binary_junk_is_malformed() {
    #[rustfmt::skip]
    let cases: &[(&str, &[u8])] = &[
        ("tls client hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
        ("nul bytes", b"\0\0\0\0"),
        ("http/0.9 request", b"GET /latest/meta-data/\r\n"),
        ("control byte in path", b"GET /a\x01b HTTP/1.1\r\n\r\n"),
        ("empty path", b"GET  HTTP/1.1\r\n\r\n"),
        ("cr not followed by lf at end", b"GET / HTTP/1.1\r\n\rX"),
        ("control in version", b"GET / HTTP/1.1\x00\r\n\r\n"),
    ];
    for (name, input) in cases {
        assert_eq!(parse(input).0, Step::Malformed, "case {name:?}");
    }
}

#[test]
fn a_request_cut_mid_header_is_not_complete() {
    for cut in [1, 5, 20, V2.len() - 1] {
        let (step, p) = parse(&V2[..cut]);
        assert_eq!(step, Step::More, "cut at {cut}");
        assert!(p.in_request());
    }
}

#[test]
fn split_anywhere_gives_the_same_result() {
    for input in [V1, PUT, V2] {
        let whole = class_of(input);
        for cut in 1..input.len() {
            let mut p = RequestParser::new();
            assert_eq!(p.feed_slice(&input[..cut]).0, Step::More, "cut {cut}");
            assert_eq!(p.feed_slice(&input[cut..]).0, Step::Complete, "cut {cut}");
            assert_eq!(p.classify(), whole, "cut {cut}");
        }
    }
}

#[test]
fn pipelined_requests_parse_one_after_another() {
    let mut stream = Vec::new();
    stream.extend_from_slice(PUT);
    stream.extend_from_slice(V2);
    stream.extend_from_slice(V1);
    let mut p = RequestParser::new();
    let mut rest = &stream[..];
    let mut classes = Vec::new();
    while !rest.is_empty() {
        let (step, used) = p.feed_slice(rest);
        assert_eq!(step, Step::Complete);
        classes.push(p.classify().0);
        p.reset();
        rest = &rest[used..];
    }
    assert_eq!(classes, [C::V2TokenPut, C::V2Get, C::V1Get]);
}

#[test]
fn content_length_is_read_for_body_skipping() {
    let (_, p) = parse(b"PUT /latest/api/token HTTP/1.1\r\nContent-Length: 12\r\nX-aws-ec2-metadata-token-ttl-seconds: 5\r\n\r\n");
    assert_eq!(p.content_length, 12);
    assert_ne!(p.flags & flag::CONTENT_LENGTH, 0);
}

#[test]
fn reset_forgets_the_previous_request() {
    let mut p = RequestParser::new();
    p.feed_slice(V2);
    p.reset();
    let (step, _) = p.feed_slice(V1);
    assert_eq!(step, Step::Complete);
    assert_eq!(p.classify().0, C::V1Get);
    assert_eq!(p.path(), b"/latest/meta-data/instance-id");
}

#[test]
fn feeding_after_the_end_is_stable() {
    let (_, mut p) = parse(V1);
    assert_eq!(p.feed(b'X'), Step::Complete);
    let (_, mut junk) = parse(b"\x16\x03");
    assert_eq!(junk.feed(b'G'), Step::Malformed);
}

#[test]
fn class_names_round_trip() {
    for class in C::ALL {
        assert_eq!(C::from_u8(class as u8), Some(class));
    }
    assert_eq!(C::from_u8(200), None);
}
