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

// ------------------------------------------------ the fast paths change nothing

mod reference;

use reference::Reference;

/// xorshift64*: reproducible inputs without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Everything the parser and the reference share, after the same bytes.
fn assert_same(new: &RequestParser, old: &Reference, at: usize, input: &[u8]) {
    let ctx = || format!("after {at} bytes of {:?}", String::from_utf8_lossy(input));
    assert_eq!(new.phase, old.phase, "phase {}", ctx());
    assert_eq!(new.head_bytes, old.head_bytes, "head_bytes {}", ctx());
    assert_eq!(new.method(), old.method(), "method {}", ctx());
    assert_eq!(new.path_len, old.path_len, "path_len {}", ctx());
    assert_eq!(new.path(), old.path(), "path {}", ctx());
    assert_eq!(new.path_tail, old.path_tail, "path_tail {}", ctx());
    assert_eq!(new.path_tail_hi, old.path_tail_hi, "path_tail_hi {}", ctx());
    assert_eq!(new.path_slashes, old.path_slashes, "path_slashes {}", ctx());
    assert_eq!(new.flags, old.flags, "flags {}", ctx());
    assert_eq!(new.ttl, old.ttl, "ttl {}", ctx());
    assert_eq!(
        new.content_length,
        old.content_length,
        "content_length {}",
        ctx()
    );
    assert_eq!(new.current, old.current, "current header {}", ctx());
    assert_eq!(new.in_request(), old.in_request(), "in_request {}", ctx());
    if reads_value(new.current) {
        assert_eq!(new.value_len, old.value_len, "value_len {}", ctx());
        assert_eq!(
            new.value_matches,
            old.value_matches,
            "value_matches {}",
            ctx()
        );
        assert_eq!(new.number_ended, old.number_ended, "number_ended {}", ctx());
    }
    if new.phase == phase::HEADER_NAME {
        // What a colon here would make of the name.
        assert_eq!(
            new.matched_header(),
            old.matched_header(),
            "header name {}",
            ctx()
        );
    }
    if new.phase == phase::DONE {
        assert_eq!(new.classify(), old.classify(), "class {}", ctx());
    }
}

/// Feeds `input` cut into segments at `cuts` (ascending) to the reference one
/// byte at a time, and to the parser as the classifier does: a byte with
/// `feed`, then a run with `feed_run` that sees only the rest of the segment
/// (the word's later bytes are junk). Resets after each complete head.
fn compare(input: &[u8], cuts: &[usize], rng: &mut Rng) {
    let mut new = RequestParser::new();
    let mut old = Reference::new();
    let mut start = 0;
    for end in cuts.iter().copied().chain([input.len()]) {
        let mut i = start;
        while i < end {
            let step = new.feed(input[i]);
            assert_eq!(step, old.feed(input[i]), "step at {i}");
            i += 1;
            assert_same(&new, &old, i, input);
            match step {
                Step::More => {}
                Step::Complete => {
                    new.reset();
                    old.reset();
                    continue;
                }
                Step::Malformed | Step::Overflow => return,
            }
            let avail = (end - i).min(8);
            let mut word = rng.next().to_le_bytes();
            word[..avail].copy_from_slice(&input[i..i + avail]);
            let taken = new.feed_run(u64::from_le_bytes(word), avail as u32) as usize;
            assert!(taken <= avail, "run of {taken} past {avail} bytes");
            for &b in &input[i..i + taken] {
                assert_eq!(
                    old.feed(b),
                    Step::More,
                    "a run took a byte that ends a step"
                );
            }
            i += taken;
            assert_same(&new, &old, i, input);
        }
        start = end;
    }
}

const NAMES: &[&str] = &[
    "x-aws-ec2-metadata-token",
    "x-aws-ec2-metadata-token-ttl-seconds",
    "x-forwarded-for",
    "metadata-flavor",
    "metadata",
    "authorization",
    "content-length",
    "x-aws-ec2-metadata-tok",
    "x-aws-ec2-metadata-tokens",
    "x-aws-ec2-metadata-token-",
    "x-aws-ec2-metadata-token-ttl-second",
    "x-aws-ec2-metadata-token-ttl-secondsx",
    "x-aws-ec2-metadata-token-ttl-seconds-and-then-some-more-bytes",
    "x-forwarded-fo",
    "x-forwarded-forx",
    "x-f",
    "x-a",
    "x-",
    "x",
    "metadat",
    "metadata-",
    "metadata-flavorx",
    "m",
    "authorizatio",
    "content-lengthy",
    "host",
    "user-agent",
    "accept",
    "x-pad",
    "",
    "x-aws-ec2-metadata token",
    "x-aws-ec2-metadata_token",
];

const VALUES: &[&str] = &[
    "21600",
    "0",
    "1",
    " 1 2",
    "1 ",
    "6O",
    "",
    "99999999999999999999",
    "12",
    "Google",
    "google ",
    "googlers",
    "true",
    "TRUE",
    "false",
    "Bearer Oracle",
    "bearer oracle",
    "Bearer abc",
    "AQAEAFake==",
    "169.254.169.254",
    "*/*",
    "imds-client/0.1.0",
];

/// Bytes that move the parser: separators, controls, the letters names start with.
const SPICE: &[u8] = b":\r\n \t/\x00\x01\x7f\x80\xffxXmMaAcC-0123456789";

fn random_case(s: &str, rng: &mut Rng) -> Vec<u8> {
    s.bytes()
        .map(|b| {
            if rng.chance(30) {
                b.to_ascii_uppercase()
            } else {
                b
            }
        })
        .collect()
}

fn random_request(rng: &mut Rng, out: &mut Vec<u8>) {
    let eol: &[u8] = if rng.chance(85) { b"\r\n" } else { b"\n" };
    if rng.chance(5) {
        out.extend_from_slice(eol);
    }
    out.extend_from_slice(
        rng.pick(&["GET", "PUT", "HEAD", "get", "POST", "GETGETGETGET"])
            .as_bytes(),
    );
    out.push(b' ');
    match rng.below(4) {
        0 => out.extend_from_slice(
            rng.pick(&[
                "/latest/api/token",
                "/2021-03-23/api/token",
                "/latest/meta-data/",
                "/",
                "/a/b/api/token",
                "latest/api/token",
            ])
            .as_bytes(),
        ),
        1 => {
            // Around PATH_CAP, and the 8 bytes before it.
            let len = PATH_CAP - 12 + rng.below(24);
            out.extend((0..len).map(|i| {
                if i % 7 == 0 {
                    b'/'
                } else {
                    b'a' + (i % 26) as u8
                }
            }));
            if rng.chance(50) {
                out.extend_from_slice(b"/api/token");
            }
        }
        _ => {
            let len = rng.below(80);
            out.extend((0..len).map(|_| {
                if rng.chance(20) {
                    b'/'
                } else {
                    b'!' + rng.below(94) as u8
                }
            }));
        }
    }
    out.extend_from_slice(if rng.chance(90) {
        b" HTTP/1.1"
    } else {
        b" HTTP/1.1 junk\x01"
    });
    out.extend_from_slice(eol);
    for _ in 0..rng.below(7) {
        match rng.below(20) {
            0 => out.extend_from_slice(b"  folded"),
            1 => out.extend_from_slice(b"no colon here"),
            2 => {
                // A long value: overflow lands anywhere near the end.
                out.extend_from_slice(b"X-Pad: ");
                let len = MAX_HEAD_BYTES as usize - 120 + rng.below(200);
                out.extend((0..len).map(|_| b'a' + rng.below(26) as u8));
            }
            _ => {
                let name = *rng.pick(NAMES);
                out.extend(random_case(name, rng));
                out.extend_from_slice(rng.pick(&[":", ": ", " :", ":\t", ":  "]).as_bytes());
                out.extend_from_slice(rng.pick(VALUES).as_bytes());
            }
        }
        out.extend_from_slice(eol);
    }
    out.extend_from_slice(eol);
}

#[test]
fn runs_and_name_matching_agree_with_the_byte_at_a_time_parser() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for round in 0..10_000 {
        let mut input = Vec::new();
        for _ in 0..1 + rng.below(3) {
            random_request(&mut rng, &mut input);
        }
        // Mutations: spice, or any byte.
        let mutations = if round % 4 == 0 { 0 } else { rng.below(6) };
        for _ in 0..mutations {
            let at = rng.below(input.len());
            input[at] = if rng.chance(70) {
                *rng.pick(SPICE)
            } else {
                rng.next() as u8
            };
        }
        let mut cuts: Vec<usize> = (0..rng.below(4))
            .map(|_| rng.below(input.len() + 1))
            .collect();
        cuts.sort_unstable();
        compare(&input, &cuts, &mut rng);
    }
}

#[test]
fn every_known_name_in_every_case_agrees() {
    let mut rng = Rng(7);
    for name in NAMES {
        for cut in 0..=name.len() {
            for _ in 0..4 {
                let mut input = b"GET / HTTP/1.1\r\n".to_vec();
                input.extend(random_case(&name[..cut], &mut rng));
                input.extend_from_slice(b": 60\r\n\r\n");
                compare(&input, &[], &mut rng);
            }
        }
    }
}

#[test]
fn swar_masks_mark_exactly_the_bytes() {
    let mut rng = Rng(3);
    let mut words: Vec<[u8; 8]> = (0..=255u8).map(|b| [b; 8]).collect();
    for _ in 0..20_000 {
        let mut w = rng.next().to_le_bytes();
        for b in &mut w {
            if rng.chance(50) {
                *b = *rng.pick(SPICE);
            }
        }
        words.push(w);
    }
    for w in words {
        let x = u64::from_le_bytes(w);
        let marks = |f: &dyn Fn(u8) -> bool| -> u64 {
            w.iter()
                .enumerate()
                .map(|(i, &b)| if f(b) { 0x80u64 << (8 * i) } else { 0 })
                .sum()
        };
        assert_eq!(swar::nonzero(x), marks(&|b| b != 0), "{w:?}");
        for c in [b'\n', b':', b'/', 0x7f, 0, 0xff] {
            assert_eq!(swar::equal(x, c), marks(&|b| b == c), "{w:?} {c}");
        }
        for n in [0u8, 1, b' ', b' ' + 1, 0x7f, 0x80] {
            assert_eq!(swar::below(x, n), marks(&|b| b < n), "{w:?} {n}");
        }
        assert_eq!(swar::upper(x), marks(&|b| b.is_ascii_uppercase()), "{w:?}");
        for n in 0..=8 {
            let from: u64 = (n..8).map(|i| 0x80u64 << (8 * i)).sum();
            assert_eq!(swar::from(n), from);
        }
        let lower = u64::from_le_bytes(w.map(|b| b.to_ascii_lowercase()));
        assert_eq!(swar::to_lower(x), lower, "{w:?}");
        let m = swar::equal(x, b'/');
        let first = w.iter().position(|&b| b == b'/').unwrap_or(8) as u32;
        assert_eq!(swar::first(m), first, "{w:?}");
        assert_eq!(
            swar::count(m),
            w.iter().filter(|&&b| b == b'/').count() as u32
        );
    }
}

#[test]
fn header_name_table_overlaps_as_the_matcher_assumes() {
    let name = |h: u8| &HEADER_NAMES[h as usize][..HEADER_LENS[h as usize] as usize];
    for h in 0..HEADER_COUNT as u8 {
        let n = name(h);
        assert!(n.len() + 8 <= NAME_ROW);
        assert!(
            HEADER_NAMES[h as usize][n.len()..]
                .iter()
                .all(|&b| b == NAME_PAD)
        );
        assert!(
            n.iter()
                .all(|&b| b.to_ascii_lowercase() == b && b != NAME_PAD)
        );
        // Each name is followed along the longest name that starts with its
        // first byte, and left only at the fork below.
        let start = name_start(n[0]);
        let longest = name(start);
        let fork = n.iter().zip(longest).take_while(|(a, b)| a == b).count();
        assert!(fork == n.len() || (start == H_TTL && fork == FORWARDED_FOR_FORK as usize));
    }
    assert!(name(H_TTL).starts_with(name(H_TOKEN)));
    assert!(name(H_METADATA_FLAVOR).starts_with(name(H_METADATA)));
}

/// `reset` writes field by field; it must leave what `new` makes, apart
/// from the path and method bytes, which are read only up to their lengths.
#[test]
fn reset_leaves_the_state_new_makes() {
    let (step, mut p) = parse(PUT);
    assert_eq!(step, Step::Complete);
    p.reset();
    let mut fresh = RequestParser::new();
    fresh.path = p.path;
    fresh.method = p.method;
    assert_eq!(format!("{p:?}"), format!("{fresh:?}"));
}

#[test]
fn starts_request_takes_request_lines_only() {
    let word = |s: &[u8]| {
        let mut w = [0u8; 8];
        let n = s.len().min(8);
        w[..n].copy_from_slice(&s[..n]);
        (u64::from_le_bytes(w), s.len() as u32)
    };
    for yes in [
        &b"GET /latest"[..],
        b"PUT /x",
        b"HEAD / HTTP/1.1",
        b"A b",
        b"OPTIONS *",
    ] {
        let (w, n) = word(yes);
        assert!(starts_request(w, n), "{:?}", String::from_utf8_lossy(yes));
    }
    for no in [
        &b"Host: x\r\n"[..],
        b"x-aws-ec2-metadata-token: t",
        b"get /",
        b" GET /",
        b"GET",
        b"GET/ x",
        b"CONNECTS x",
        b"\r\n",
        b"",
        b"HTTP/1.1\r\n",
        b"GE",
    ] {
        let (w, n) = word(no);
        assert!(!starts_request(w, n), "{:?}", String::from_utf8_lossy(no));
    }
    // Bytes past `avail` do not count.
    let (w, _) = word(b"GET /");
    assert!(!starts_request(w, 3));
}
