//! The parsers under test, each with a grammar of plausible inputs and the valid inputs its
//! mutations start from. Every valid token or header is made with a test secret and key,
//! deterministically, so a seed always yields the same inputs.

use std::borrow::Cow;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use common::crypto::Secret;
use common::model::{EpochSecs, MessageId};
use common::validate::{NotifyLimits, DEFAULT_MAX_CLOCK_SKEW, DEFAULT_MAX_MESSAGE};
use common::webpush::{ChannelId, PushHeaders, RawHeaders, Subscription};
use hmac::{Hmac, Mac};
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use sha2::Sha256;

use crate::gen::{self, number, object, quoted, string, value, Rng};

/// One parser: how to make inputs for it and how to call it.
pub struct Target {
    pub name: &'static str,
    /// What it calls, for `--list` and the README.
    pub calls: &'static str,
    grammar: fn(&mut Rng, &Ctx) -> Vec<u8>,
    seeds: fn(&Ctx) -> Vec<Vec<u8>>,
    /// Calls the parser; whether it accepted the input.
    run: fn(&Ctx, &[u8]) -> bool,
}

impl Target {
    /// The inputs mutations start from: the target's valid inputs first, then some of its
    /// grammar's.
    pub fn corpus(&self, ctx: &Ctx) -> Vec<Vec<u8>> {
        let mut corpus = (self.seeds)(ctx);
        let mut rng = Rng::new(0x5eed);
        corpus.extend((0..64).map(|_| (self.grammar)(&mut rng, ctx)));
        corpus
    }

    /// How many of the corpus's first entries are valid inputs.
    fn valid_in(&self, corpus: &[Vec<u8>]) -> usize {
        corpus.len().saturating_sub(64).max(1)
    }

    /// The next input: random bytes, a grammar's output (sometimes mutated), or a mutated
    /// corpus entry.
    pub fn input(&self, rng: &mut Rng, ctx: &Ctx, corpus: &[Vec<u8>]) -> Vec<u8> {
        match rng.below(16) {
            0 => {
                let n = rng.len(32, 1024);
                rng.bytes(n)
            }
            1 => {
                let n = rng.len(48, 512);
                (0..n).map(|_| 0x20 + rng.below(0x5f) as u8).collect()
            }
            2..=7 => {
                let mut input = (self.grammar)(rng, ctx);
                if rng.one_in(3) {
                    gen::mutate(rng, &mut input, corpus);
                }
                input
            }
            _ => {
                // Half the time from a valid input, whose mutations get furthest.
                let from = if rng.one_in(2) {
                    &corpus[..self.valid_in(corpus)]
                } else {
                    corpus
                };
                let mut input = rng.pick_ref(from).clone();
                // Now and then a corpus entry as it is: the paths past every check run too.
                if !rng.one_in(64) {
                    gen::mutate(rng, &mut input, corpus);
                }
                input
            }
        }
    }

    /// Calls the parser on `input`; whether it accepted it.
    pub fn run(&self, ctx: &Ctx, input: &[u8]) -> bool {
        (self.run)(ctx, input)
    }

    /// The same target calling `run` instead: how the harness's own tests make one panic.
    pub fn with_run(self, run: fn(&Ctx, &[u8]) -> bool) -> Target {
        Target { run, ..self }
    }

    /// The valid inputs the target starts from, which its parser must accept.
    pub fn valid_seeds(&self, ctx: &Ctx) -> Vec<Vec<u8>> {
        (self.seeds)(ctx)
    }
}

/// What the targets share: the test secret and key, the clock, and valid tokens.
pub struct Ctx {
    pub secret: Secret,
    pub now: EpochSecs,
    pub origin: &'static str,
    vapid_key: SigningKey,
    other_vapid_key: SigningKey,
    uatokens: Vec<String>,
    uaids: Vec<String>,
    endpoints: Vec<String>,
    locations: Vec<String>,
    channels: Vec<String>,
    vapid_public: Vec<String>,
}

const SECRET: &[u8] = b"ns-fuzz test secret";
const NOW: EpochSecs = EpochSecs(1_700_000_000);
const ORIGIN: &str = "http://127.0.0.1:8081";

/// A 1024-bit RSA public key made for these tests, as SPKI and as PKCS#1.
const RSA_SPKI: &str = "-----BEGIN PUBLIC KEY-----
MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQC1MET2Aqny3nXQR9mpxRDxwqui
MvTwBRl3gkpaEC23yDjZ6TYolzsVit/jTAcG4QKG8IvCDXZQrcx9ugNva68JU/eI
s8b3BMegfx2nSS30RUitfTeuTTZQG8kwiyReoSeiTPH2y5UGwqSfiGbxDWk3ZnlY
gfYS2wI/6Twpl/lrZQIDAQAB
-----END PUBLIC KEY-----
";
const RSA_PKCS1: &str = "-----BEGIN RSA PUBLIC KEY-----
MIGJAoGBALUwRPYCqfLeddBH2anFEPHCq6Iy9PAFGXeCSloQLbfIONnpNiiXOxWK
3+NMBwbhAobwi8INdlCtzH26A29rrwlT94izxvcEx6B/HadJLfRFSK19N65NNlAb
yTCLJF6hJ6JM8fbLlQbCpJ+IZvENaTdmeViB9hLbAj/pPCmX+WtlAgMBAAE=
-----END RSA PUBLIC KEY-----
";

impl Default for Ctx {
    fn default() -> Self {
        Ctx::new()
    }
}

impl Ctx {
    pub fn new() -> Ctx {
        let secret = Secret::new(SECRET);
        let bearer = |domain: &[u8], n: u8| bearer(SECRET, domain, [n; 16]);
        let uatokens: Vec<String> = (0..4).map(|n| bearer(b"uatoken\0", n)).collect();
        let uaids: Vec<String> = (0..4).map(|n| bearer(b"uaid\0", n)).collect();
        let channels = vec![
            "5d0b5a1e-8a4c-4a43-9f3e-3a1b2c3d4e5f".to_owned(),
            "5D0B5A1E-8A4C-4A43-9F3E-3A1B2C3D4E5F".to_owned(),
            "5d0b5a1e8a4c4a439f3e3a1b2c3d4e5f".to_owned(),
            "00000000-0000-0000-0000-000000000000".to_owned(),
        ];
        let vapid_key = signing_key(7);
        let public = common::vapid::PublicKey::from(vapid_key.verifying_key());
        let raw = public.as_bytes().to_vec();
        let vapid_public = vec![
            public.to_base64(),
            STANDARD.encode(&raw),
            format!("{}=", URL_SAFE_NO_PAD.encode(&raw)),
        ];
        let ua = common::crypto::ua_id(&uaids[0]);
        let channel = ChannelId::parse(&channels[0]).unwrap_or_else(|| unreachable!());
        let endpoints = [None, Some(raw.as_slice())]
            .into_iter()
            .filter_map(|key| Subscription::new(&ua, channel, key))
            .map(|s| s.endpoint_token(&secret))
            .collect();
        let id = MessageId::new("0190a1b2c3d4e5f60718293a4b5c6d7e");
        let locations = [true, false]
            .into_iter()
            .map(|stored| common::webpush::location_token(&secret, &id, stored))
            .collect();
        Ctx {
            secret,
            now: NOW,
            origin: ORIGIN,
            vapid_key,
            other_vapid_key: signing_key(9),
            uatokens,
            uaids,
            endpoints,
            locations,
            channels,
            vapid_public,
        }
    }

    /// A VAPID JWT over `header` and `claims` (JSON text), signed with the test key.
    fn jwt(&self, header: &str, claims: &str, key: &SigningKey) -> String {
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let signature: Signature = key.sign(signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
    }
}

/// A fixed P-256 key: a non-zero scalar below the group order.
fn signing_key(seed: u8) -> SigningKey {
    let mut bytes = [seed; 32];
    bytes[0] = 0x01;
    SigningKey::from_slice(&bytes).unwrap_or_else(|_| unreachable!("a valid scalar"))
}

/// A bearer token as `common::crypto` makes them (random bits, then a truncated HMAC of
/// them under the secret, for one kind of token), with chosen bits so it is deterministic.
/// `Ctx`'s tests check that the server accepts it, so a change of scheme shows.
fn bearer(secret: &[u8], domain: &[u8], random: [u8; 16]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    mac.update(domain);
    mac.update(&random);
    let tag = mac.finalize().into_bytes();
    let mut raw = random.to_vec();
    raw.extend_from_slice(&tag[..16]);
    URL_SAFE_NO_PAD.encode(raw)
}

fn text(input: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(input)
}

/// Separates the fields of a target that takes several strings.
const SEP: u8 = 0x1f;
/// A field that is only this byte is absent (`None`).
const ABSENT: &[u8] = b"\x00";

fn join(fields: &[Option<&str>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(SEP);
        }
        match field {
            Some(s) => out.extend_from_slice(s.as_bytes()),
            None => out.extend_from_slice(ABSENT),
        }
    }
    out
}

fn split(input: &[u8], n: usize) -> Vec<Option<String>> {
    let mut fields: Vec<Option<String>> = input
        .splitn(n, |b| *b == SEP)
        .map(|f| (f != ABSENT).then(|| text(f).into_owned()))
        .collect();
    fields.resize(n, None);
    fields
}

fn strings(items: &[String]) -> Vec<Vec<u8>> {
    items.iter().map(|s| s.clone().into_bytes()).collect()
}

/// A token-like string: base64url (or not quite) of about the length tokens have.
fn token_like(rng: &mut Rng, lengths: &[usize]) -> String {
    let n = rng.pick(lengths);
    let raw = rng.bytes(n);
    let mut s = if rng.one_in(4) {
        STANDARD.encode(raw)
    } else {
        URL_SAFE_NO_PAD.encode(raw)
    };
    if rng.one_in(8) {
        s.push_str(rng.pick(&["=", "==", " ", "é", "\u{0}", "%"]));
    }
    s
}

/// A valid token of `valid`, or a token-like string, as a JSON value now and then confused.
fn token_value(rng: &mut Rng, valid: &[String]) -> String {
    match rng.below(5) {
        0 | 1 => quoted(rng.pick_ref(valid).as_str()),
        2 => quoted(&token_like(rng, &[31, 32, 33, 48])),
        3 => string(rng),
        _ => {
            let mut t = rng.pick_ref(valid).clone();
            t.insert(rng.below(t.len() + 1), 'A');
            quoted(&t)
        }
    }
}

// --- notify ---

fn notify_grammar(rng: &mut Rng, ctx: &Ctx) -> Vec<u8> {
    object(
        rng,
        ctx,
        &[
            ("messageType", |rng, _| {
                quoted(rng.pick(&["notification", "Notification", "", "ping"]))
            }),
            ("id", |rng, _| match rng.below(4) {
                0 => number(rng),
                1 => quoted(&"x".repeat(rng.pick(&[1, 31, 32, 33]))),
                2 => quoted(&"é".repeat(rng.pick(&[1, 32, 33]))),
                _ => string(rng),
            }),
            ("message", |rng, _| match rng.below(4) {
                0 => quoted(&"m".repeat(rng.pick(&[0, 4095, 4096, 4097]))),
                1 => quoted(&"é".repeat(rng.pick(&[2048, 2049]))),
                _ => string(rng),
            }),
            ("signature", |rng, _| quoted(&hex::encode(rng.bytes(64)))),
            ("ttl", |rng, _| {
                int_or_text(rng, &[0, 1, 2_592_000, 2_592_001, -1])
            }),
            ("timestamp", |rng, ctx| {
                let now = ctx.now.as_i64();
                int_or_text(
                    rng,
                    &[now, now - 1, now + 300, now + 301, 0, -3, now - 2_592_000],
                )
            }),
            ("priority", |rng, _| int_or_text(rng, &[0, 1, 2, 3, 4, 5])),
        ],
    )
    .into_bytes()
}

/// An integer near `edges`, as a JSON number, a float or a numeric string.
fn int_or_text(rng: &mut Rng, edges: &[i64]) -> String {
    let n = rng.pick(edges).wrapping_add(rng.below(3) as i64 - 1);
    match rng.below(6) {
        0 => format!("\"{n}\""),
        1 => format!("\" {n} \""),
        2 => format!("{n}.0"),
        3 => number(rng),
        _ => n.to_string(),
    }
}

fn notify_seeds(ctx: &Ctx) -> Vec<Vec<u8>> {
    let now = ctx.now.as_i64();
    vec![
        br#"{"id": "a", "message": "hi"}"#.to_vec(),
        format!(
            r#"{{"messageType": "notification", "id": 17, "message": "m", "signature": "ab",
                "ttl": 0, "timestamp": "{now}", "priority": 1}}"#
        )
        .into_bytes(),
        format!(r#"{{"id": "a", "message": "m", "ttl": 60, "timestamp": {now}}}"#).into_bytes(),
    ]
}

fn notify_run(ctx: &Ctx, input: &[u8]) -> bool {
    let limits = NotifyLimits {
        max_message: DEFAULT_MAX_MESSAGE,
        max_clock_skew: DEFAULT_MAX_CLOCK_SKEW,
    };
    common::validate::validate_notify(input, limits, ctx.now).is_ok()
}

// --- Telefónica WebSocket frames ---

fn frame_grammar(rng: &mut Rng, ctx: &Ctx) -> Vec<u8> {
    if rng.one_in(20) {
        return rng
            .pick(&["PING", " PING\n", "ping", "PING PING"])
            .as_bytes()
            .to_vec();
    }
    object(
        rng,
        ctx,
        &[
            ("command", |rng, _| {
                quoted(rng.pick(&[
                    "register/ua",
                    "register/wa",
                    "unregister/wa",
                    "ack",
                    "Register/UA",
                    "fly",
                    "",
                ]))
            }),
            ("data", |rng, ctx| {
                object(
                    rng,
                    ctx,
                    &[
                        ("uatoken", |rng, ctx| token_value(rng, &ctx.uatokens)),
                        ("watoken", |rng, _| match rng.below(3) {
                            0 => quoted(&"w".repeat(rng.pick(&[1, 256, 257]))),
                            _ => string(rng),
                        }),
                        ("pbkbase64", |rng, _| quoted(&rsa_key(rng))),
                        ("interface", |rng, ctx| {
                            object(
                                rng,
                                ctx,
                                &[
                                    ("ip", |rng, _| {
                                        quoted(rng.pick(&[
                                            "10.0.0.1",
                                            "::1",
                                            " 127.0.0.1 ",
                                            "256.0.0.1",
                                            "fe80::1%eth0",
                                            "::ffff:1.2.3.4",
                                            "1.2.3",
                                        ]))
                                    }),
                                    ("port", |rng, _| {
                                        int_or_text(rng, &[0, 1, 5000, 65535, 65536, -1])
                                    }),
                                ],
                            )
                        }),
                        ("messageId", |rng, _| string(rng)),
                        ("messageIds", |rng, _| ids(rng)),
                    ],
                )
            }),
        ],
    )
    .into_bytes()
}

/// An array of message ids, now and then at or past the most one ack may carry.
fn ids(rng: &mut Rng) -> String {
    let n = if rng.one_in(10) {
        rng.pick(&[1000, 1001])
    } else {
        rng.below(5)
    };
    let items: Vec<String> = (0..n)
        .map(|i| {
            if rng.one_in(20) {
                value(rng, 2)
            } else {
                quoted(&i.to_string())
            }
        })
        .collect();
    format!("[{}]", items.join(","))
}

/// Base64 of an RSA public key PEM, often damaged in its PEM text or in its DER.
fn rsa_key(rng: &mut Rng) -> String {
    let pem = rng.pick(&[RSA_SPKI, RSA_PKCS1]);
    let pem = match rng.below(4) {
        0 => pem.to_owned(),
        1 => pem.replace('\n', "\r\n"),
        2 => {
            // Damage the DER inside and wrap it again, so the PEM layer still parses.
            let mut lines: Vec<&str> = pem.lines().collect();
            let (begin, end) = (lines.remove(0), lines.pop().unwrap_or_default());
            let mut der = STANDARD.decode(lines.concat()).unwrap_or_default();
            gen::mutate(rng, &mut der, &[]);
            format!("{begin}\n{}\n{end}\n", STANDARD.encode(der))
        }
        _ => {
            let mut bytes = pem.as_bytes().to_vec();
            gen::mutate(rng, &mut bytes, &[]);
            text(&bytes).into_owned()
        }
    };
    STANDARD.encode(pem)
}

fn frame_seeds(ctx: &Ctx) -> Vec<Vec<u8>> {
    let t = &ctx.uatokens[0];
    let k = STANDARD.encode(RSA_SPKI);
    vec![
        b"PING".to_vec(),
        format!(r#"{{"command":"register/ua","data":{{"uatoken":"{t}","interface":{{"ip":"10.0.0.1","port":"5000"}}}}}}"#).into_bytes(),
        format!(r#"{{"command":"register/wa","data":{{"uatoken":"{t}","watoken":"w","pbkbase64":"{k}"}}}}"#).into_bytes(),
        format!(r#"{{"command":"unregister/wa","data":{{"uatoken":"{t}","watoken":"w"}}}}"#).into_bytes(),
        br#"{"command":"ack","data":{"messageIds":["a","b"]}}"#.to_vec(),
        br#"{"command":"ack","data":{"messageId":"a"}}"#.to_vec(),
    ]
}

fn frame_run(_: &Ctx, input: &[u8]) -> bool {
    ns_ua_ws::fuzz::telefonica_frame(&text(input))
}

// --- Web Push WebSocket messages ---

fn webpush_grammar(rng: &mut Rng, ctx: &Ctx) -> Vec<u8> {
    object(
        rng,
        ctx,
        &[
            ("messageType", |rng, _| {
                quoted(rng.pick(&[
                    "hello",
                    "HELLO",
                    "register",
                    "unregister",
                    "ack",
                    "nack",
                    "broadcast_subscribe",
                    "ping",
                    "",
                ]))
            }),
            ("uaid", |rng, ctx| token_value(rng, &ctx.uaids)),
            ("channelID", |rng, ctx| quoted(&channel(rng, ctx))),
            ("key", |rng, ctx| quoted(&vapid_key(rng, ctx))),
            ("use_webpush", |_, _| "true".into()),
            ("updates", |rng, _| {
                let items: Vec<String> = (0..rng.len(4, 1001))
                    .map(|_| {
                        format!(
                            r#"{{"channelID":"c","version":{},"code":{}}}"#,
                            string(rng),
                            int_or_text(rng, &[100, 101, 102, 302])
                        )
                    })
                    .collect();
                format!("[{}]", items.join(","))
            }),
            ("version", |rng, _| string(rng)),
            ("code", |rng, _| number(rng)),
        ],
    )
    .into_bytes()
}

fn webpush_seeds(ctx: &Ctx) -> Vec<Vec<u8>> {
    let (uaid, channel, key) = (&ctx.uaids[0], &ctx.channels[0], &ctx.vapid_public[0]);
    vec![
        b"{}".to_vec(),
        format!(r#"{{"messageType":"hello","uaid":"{uaid}","use_webpush":true,"broadcasts":{{}}}}"#).into_bytes(),
        format!(r#"{{"messageType":"register","channelID":"{channel}","key":"{key}"}}"#).into_bytes(),
        format!(r#"{{"messageType":"unregister","channelID":"{channel}","code":200}}"#).into_bytes(),
        format!(r#"{{"messageType":"ack","updates":[{{"channelID":"{channel}","version":"a","code":100}}]}}"#).into_bytes(),
        br#"{"messageType":"nack","version":"a","code":302}"#.to_vec(),
        br#"{"messageType":"broadcast_subscribe","broadcasts":{}}"#.to_vec(),
    ]
}

fn webpush_run(ctx: &Ctx, input: &[u8]) -> bool {
    ns_ua_ws::fuzz::webpush_message(&text(input), &ctx.secret)
}

// --- ns-ua-udp pull and ack bodies ---

fn pull_grammar(rng: &mut Rng, ctx: &Ctx) -> Vec<u8> {
    object(
        rng,
        ctx,
        &[
            ("uatoken", |rng, ctx| token_value(rng, &ctx.uatokens)),
            ("limit", |rng, _| int_or_text(rng, &[0, 1, 100, 101, -1])),
        ],
    )
    .into_bytes()
}

fn pull_seeds(ctx: &Ctx) -> Vec<Vec<u8>> {
    let t = &ctx.uatokens[1];
    vec![
        format!(r#"{{"uatoken":"{t}"}}"#).into_bytes(),
        format!(r#"{{"uatoken":"{t}","limit":5}}"#).into_bytes(),
    ]
}

fn pull_run(ctx: &Ctx, input: &[u8]) -> bool {
    ns_ua_udp::fuzz::pull_body(input, &ctx.secret)
}

fn ack_grammar(rng: &mut Rng, ctx: &Ctx) -> Vec<u8> {
    object(
        rng,
        ctx,
        &[
            ("uatoken", |rng, ctx| token_value(rng, &ctx.uatokens)),
            ("messageIds", |rng, _| ids(rng)),
        ],
    )
    .into_bytes()
}

fn ack_seeds(ctx: &Ctx) -> Vec<Vec<u8>> {
    let t = &ctx.uatokens[2];
    vec![format!(r#"{{"uatoken":"{t}","messageIds":["a","b"]}}"#).into_bytes()]
}

fn ack_run(ctx: &Ctx, input: &[u8]) -> bool {
    ns_ua_udp::fuzz::ack_body(input, &ctx.secret)
}

// --- tokens ---

fn uatoken_grammar(rng: &mut Rng, _: &Ctx) -> Vec<u8> {
    token_like(rng, &[0, 16, 31, 32, 33, 48]).into_bytes()
}

fn uatoken_seeds(ctx: &Ctx) -> Vec<Vec<u8>> {
    strings(&ctx.uatokens)
}

fn uatoken_run(ctx: &Ctx, input: &[u8]) -> bool {
    common::crypto::verify_uatoken(&ctx.secret, &text(input)).is_some()
}

fn uaid_seeds(ctx: &Ctx) -> Vec<Vec<u8>> {
    strings(&ctx.uaids)
}

fn uaid_run(ctx: &Ctx, input: &[u8]) -> bool {
    common::webpush::verify_uaid(&ctx.secret, &text(input)).is_some()
}

fn endpoint_grammar(rng: &mut Rng, _: &Ctx) -> Vec<u8> {
    token_like(rng, &[0, 48, 64, 65, 66, 97, 98, 130]).into_bytes()
}

fn endpoint_seeds(ctx: &Ctx) -> Vec<Vec<u8>> {
    strings(&ctx.endpoints)
}

fn endpoint_run(ctx: &Ctx, input: &[u8]) -> bool {
    Subscription::open(&ctx.secret, &text(input)).is_some()
}

fn location_grammar(rng: &mut Rng, _: &Ctx) -> Vec<u8> {
    token_like(rng, &[0, 1, 16, 17, 18, 49, 190, 192, 193]).into_bytes()
}

fn location_seeds(ctx: &Ctx) -> Vec<Vec<u8>> {
    strings(&ctx.locations)
}

fn location_run(ctx: &Ctx, input: &[u8]) -> bool {
    common::webpush::open_location(&ctx.secret, &text(input)).is_some()
}

fn rsa_grammar(rng: &mut Rng, _: &Ctx) -> Vec<u8> {
    let mut key = rsa_key(rng);
    if rng.one_in(8) {
        key = format!("  {key}\n");
    }
    key.into_bytes()
}

fn rsa_seeds(_: &Ctx) -> Vec<Vec<u8>> {
    vec![
        STANDARD.encode(RSA_SPKI).into_bytes(),
        STANDARD.encode(RSA_PKCS1).into_bytes(),
    ]
}

fn rsa_run(_: &Ctx, input: &[u8]) -> bool {
    common::crypto::PublicKey::from_base64(&text(input)).is_ok()
}

// --- Web Push headers and VAPID ---

fn channel(rng: &mut Rng, ctx: &Ctx) -> String {
    let mut c = rng.pick_ref(&ctx.channels).clone();
    match rng.below(6) {
        0 => {}
        // Same length in bytes, with a multi-byte character where a dash or digit was.
        1 => {
            let i = rng.below(c.len() - 1);
            c.replace_range(i..i + 2, "é");
        }
        2 => {
            let i = rng.below(c.len());
            c.replace_range(i..i + 1, rng.pick(&["-", "g", "G", " ", "+"]));
        }
        3 => c.truncate(rng.below(c.len())),
        4 => c.push_str(rng.pick(&["0", "-", "00000"])),
        _ => {
            let n = rng.below(20);
            c = hex::encode(rng.bytes(n));
        }
    }
    c
}

fn channel_grammar(rng: &mut Rng, ctx: &Ctx) -> Vec<u8> {
    channel(rng, ctx).into_bytes()
}

fn channel_seeds(ctx: &Ctx) -> Vec<Vec<u8>> {
    strings(&ctx.channels)
}

fn channel_run(_: &Ctx, input: &[u8]) -> bool {
    ChannelId::parse(&text(input)).is_some()
}

/// A VAPID public key: valid, or a damaged point re-encoded, in either alphabet.
fn vapid_key(rng: &mut Rng, ctx: &Ctx) -> String {
    if rng.one_in(3) {
        return rng.pick_ref(&ctx.vapid_public).clone();
    }
    let valid = URL_SAFE_NO_PAD
        .decode(&ctx.vapid_public[0])
        .unwrap_or_default();
    let mut raw = match rng.below(5) {
        0 => vec![0x04; 65],
        1 => {
            let mut p = vec![0xff; 65];
            p[0] = 0x04;
            p
        }
        2 => valid[..33].to_vec(),
        _ => valid,
    };
    if rng.one_in(2) {
        raw[0] = rng.pick(&[0x00, 0x02, 0x03, 0x04, 0x05]);
    }
    if rng.one_in(2) {
        gen::mutate(rng, &mut raw, &[]);
    }
    match rng.below(4) {
        0 => STANDARD.encode(raw),
        1 => format!(" {}== ", URL_SAFE_NO_PAD.encode(raw)),
        _ => URL_SAFE_NO_PAD.encode(raw),
    }
}

fn vapid_key_grammar(rng: &mut Rng, ctx: &Ctx) -> Vec<u8> {
    vapid_key(rng, ctx).into_bytes()
}

fn vapid_key_seeds(ctx: &Ctx) -> Vec<Vec<u8>> {
    strings(&ctx.vapid_public)
}

fn vapid_key_run(_: &Ctx, input: &[u8]) -> bool {
    common::vapid::PublicKey::from_base64(&text(input)).is_ok()
}

fn headers_grammar(rng: &mut Rng, _: &Ctx) -> Vec<u8> {
    fn maybe<'a>(rng: &mut Rng, options: &[&'a str]) -> Option<&'a str> {
        (!rng.one_in(4)).then(|| rng.pick(options))
    }
    let ttl = number(rng);
    let ttl = maybe(
        rng,
        &[
            ttl.as_str(),
            "0",
            " 60 ",
            "-1",
            "+5",
            "1e3",
            "",
            "99999999999999999999",
            "4294967296",
        ],
    );
    let urgency = maybe(
        rng,
        &["very-low", "low", "normal", "high", " high ", "HIGH", ""],
    );
    let topic = "t".repeat(rng.below(40));
    let topic = maybe(rng, &[topic.as_str(), "abc_-1", "a b", "a=", "é"]);
    let encoding = maybe(rng, &["aes128gcm", "AESGCM", " aesgcm ", "gzip", ""]);
    let encryption = maybe(
        rng,
        &[
            "salt=abc",
            "salt=",
            "keyid=p256dh;salt=x",
            ";,=",
            "SALT = y",
        ],
    );
    let crypto_key = maybe(
        rng,
        &[
            "dh=def;p256ecdsa=ghi",
            "dh=",
            "p256ecdsa=x",
            "DH=a,b=c",
            "=",
        ],
    );
    let len = rng.pick(&[0, 1, 4096, 4097]).to_string();
    join(&[
        ttl,
        urgency,
        topic,
        encoding,
        encryption,
        crypto_key,
        Some(&len),
    ])
}

fn headers_seeds(_: &Ctx) -> Vec<Vec<u8>> {
    vec![
        join(&[
            Some("60"),
            None,
            None,
            Some("aes128gcm"),
            None,
            None,
            Some("10"),
        ]),
        join(&[
            Some("0"),
            Some("high"),
            Some("abc_-1"),
            Some("aesgcm"),
            Some("salt=abc"),
            Some("dh=def;p256ecdsa=ghi"),
            Some("100"),
        ]),
    ]
}

fn headers_run(_: &Ctx, input: &[u8]) -> bool {
    let f = split(input, 7);
    let body_len = f[6]
        .as_deref()
        .and_then(|l| l.parse().ok())
        .unwrap_or(input.len());
    let raw = RawHeaders {
        ttl: f[0].as_deref(),
        urgency: f[1].as_deref(),
        topic: f[2].as_deref(),
        content_encoding: f[3].as_deref(),
        encryption: f[4].as_deref(),
        crypto_key: f[5].as_deref(),
    };
    PushHeaders::parse(raw, body_len).is_ok()
}

/// A VAPID `Authorization` (and `Crypto-Key`): a JWT signed with the test key over a header
/// and claims from a grammar, so the claim checks behind the signature are reached too, in
/// either header form with the spellings senders use.
fn vapid_grammar(rng: &mut Rng, ctx: &Ctx) -> Vec<u8> {
    let header = match rng.below(6) {
        0 => object(
            rng,
            ctx,
            &[
                ("typ", |_, _| quoted("JWT")),
                ("alg", |rng, _| {
                    quoted(rng.pick(&["ES256", "es256", "none", "RS256"]))
                }),
            ],
        ),
        1 => value(rng, 1),
        _ => r#"{"typ":"JWT","alg":"ES256"}"#.to_owned(),
    };
    let claims = object(
        rng,
        ctx,
        &[
            ("aud", |rng, ctx| {
                quoted(rng.pick(&[
                    ctx.origin,
                    "http://127.0.0.1",
                    "HTTP://127.0.0.1:8081",
                    "http://127.0.0.1:8081/",
                    "http://127.0.0.1:",
                    "http://[::1]:8081",
                    "",
                    "é:8081",
                ]))
            }),
            ("exp", |rng, ctx| {
                let now = ctx.now.as_i64();
                match rng.below(3) {
                    0 => format!("{}.5", now + 60),
                    1 => number(rng),
                    _ => int_or_text(rng, &[now, now + 1, now + 86_400, now + 86_401, i64::MAX]),
                }
            }),
            ("sub", |rng, _| match rng.below(3) {
                0 => quoted("mailto:ops@example.com"),
                _ => value(rng, 1),
            }),
        ],
    );
    let key = if rng.one_in(10) {
        &ctx.other_vapid_key
    } else {
        &ctx.vapid_key
    };
    let jwt = ctx.jwt(&header, &claims, key);
    let k = vapid_key(rng, ctx);
    let (authorization, crypto_key) = match rng.below(6) {
        0 => (
            format!("WebPush {jwt}"),
            Some(format!("dh=abc;p256ecdsa={k}")),
        ),
        1 => (
            format!("webpush  {jwt}"),
            Some(format!("p256ecdsa=\"{k}\"")),
        ),
        2 => (format!("VAPID k={k}, t={jwt}"), None),
        3 => (format!("vapid t=\"{jwt}\",k=\"{k}\",x=1"), None),
        _ => (format!("vapid t={jwt},k={k}"), None),
    };
    join(&[Some(&authorization), crypto_key.as_deref()])
}

fn vapid_seeds(ctx: &Ctx) -> Vec<Vec<u8>> {
    let exp = EpochSecs(ctx.now.as_i64() + 3600);
    let signed = common::vapid::sign(&ctx.vapid_key, ctx.origin, exp, Some("mailto:a@b.c"));
    let jwt = signed
        .strip_prefix("vapid t=")
        .and_then(|rest| rest.split_once(",k="))
        .map(|(t, _)| t.to_owned())
        .unwrap_or_default();
    let web_push = format!("WebPush {jwt}");
    let crypto_key = format!("dh=abc;p256ecdsa={}", ctx.vapid_public[0]);
    vec![
        join(&[Some(&signed), None]),
        join(&[Some(&web_push), Some(&crypto_key)]),
    ]
}

fn vapid_run(ctx: &Ctx, input: &[u8]) -> bool {
    let f = split(input, 2);
    let authorization = f[0].as_deref().unwrap_or_default();
    common::vapid::verify(authorization, f[1].as_deref(), ctx.origin, ctx.now).is_ok()
}

/// Every target, in the order they run and print.
pub fn all() -> Vec<Target> {
    vec![
        Target {
            name: "notify",
            calls: "common::validate::validate_notify",
            grammar: notify_grammar,
            seeds: notify_seeds,
            run: notify_run,
        },
        Target {
            name: "ws-frame",
            calls: "ns-ua-ws frames::parse (Telefónica frames)",
            grammar: frame_grammar,
            seeds: frame_seeds,
            run: frame_run,
        },
        Target {
            name: "ws-webpush",
            calls: "ns-ua-ws webpush::parse, hello_identity, name_subscription",
            grammar: webpush_grammar,
            seeds: webpush_seeds,
            run: webpush_run,
        },
        Target {
            name: "udp-pull",
            calls: "ns-ua-udp read_pull (POST /pull body)",
            grammar: pull_grammar,
            seeds: pull_seeds,
            run: pull_run,
        },
        Target {
            name: "udp-ack",
            calls: "ns-ua-udp read_ack (POST /ack body)",
            grammar: ack_grammar,
            seeds: ack_seeds,
            run: ack_run,
        },
        Target {
            name: "uatoken",
            calls: "common::crypto::verify_uatoken",
            grammar: uatoken_grammar,
            seeds: uatoken_seeds,
            run: uatoken_run,
        },
        Target {
            name: "uaid",
            calls: "common::webpush::verify_uaid",
            grammar: uatoken_grammar,
            seeds: uaid_seeds,
            run: uaid_run,
        },
        Target {
            name: "endpoint",
            calls: "common::webpush::Subscription::open",
            grammar: endpoint_grammar,
            seeds: endpoint_seeds,
            run: endpoint_run,
        },
        Target {
            name: "location",
            calls: "common::webpush::open_location",
            grammar: location_grammar,
            seeds: location_seeds,
            run: location_run,
        },
        Target {
            name: "rsa-key",
            calls: "common::crypto::PublicKey::from_base64",
            grammar: rsa_grammar,
            seeds: rsa_seeds,
            run: rsa_run,
        },
        Target {
            name: "push-headers",
            calls: "common::webpush::PushHeaders::parse",
            grammar: headers_grammar,
            seeds: headers_seeds,
            run: headers_run,
        },
        Target {
            name: "vapid",
            calls: "common::vapid::verify",
            grammar: vapid_grammar,
            seeds: vapid_seeds,
            run: vapid_run,
        },
        Target {
            name: "vapid-key",
            calls: "common::vapid::PublicKey::from_base64",
            grammar: vapid_key_grammar,
            seeds: vapid_key_seeds,
            run: vapid_key_run,
        },
        Target {
            name: "channel-id",
            calls: "common::webpush::ChannelId::parse",
            grammar: channel_grammar,
            seeds: channel_seeds,
            run: channel_run,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_tokens_are_genuine() {
        let ctx = Ctx::new();
        for t in &ctx.uatokens {
            assert!(common::crypto::verify_uatoken(&ctx.secret, t).is_some());
        }
        for u in &ctx.uaids {
            assert!(common::webpush::verify_uaid(&ctx.secret, u).is_some());
        }
    }

    #[test]
    fn fields_round_trip() {
        let input = join(&[Some("a"), None, Some("")]);
        assert_eq!(
            split(&input, 4),
            vec![Some("a".into()), None, Some("".into()), None]
        );
    }
}
