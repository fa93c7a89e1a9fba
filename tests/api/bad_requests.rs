use token_authority::pb;
use tonic::Code;

use crate::helpers::{DataDir, TestServer};

fn request(subject: &str) -> pb::IssueTokenRequest {
    pb::IssueTokenRequest {
        subject: subject.into(),
        ..Default::default()
    }
}

fn ttl(seconds: i64, nanos: i32) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds, nanos })
}

/// Each bad IssueToken request, the code and the words the caller sees.
#[tokio::test]
async fn bad_issue_requests_are_invalid_argument_naming_the_field() {
    let dir = DataDir::new();
    let server = TestServer::start_with(crate::helpers::config(&dir, &["--max-ttl", "1h"])).await;
    let long = "x".repeat(1025);
    let cases: Vec<(&str, pb::IssueTokenRequest, Code, String)> = vec![
        (
            "empty subject",
            request(""),
            Code::InvalidArgument,
            "subject: is required".into(),
        ),
        (
            "blank subject",
            request("  "),
            Code::InvalidArgument,
            "subject: is required".into(),
        ),
        (
            "long subject",
            request(&long),
            Code::InvalidArgument,
            "subject: is longer than 1024 bytes".into(),
        ),
        (
            "zero ttl",
            pb::IssueTokenRequest {
                ttl: ttl(0, 0),
                ..request("s")
            },
            Code::InvalidArgument,
            "ttl: must be positive".into(),
        ),
        (
            "negative ttl",
            pb::IssueTokenRequest {
                ttl: ttl(-60, 0),
                ..request("s")
            },
            Code::InvalidArgument,
            "ttl: must be positive".into(),
        ),
        (
            "sub-second ttl",
            pb::IssueTokenRequest {
                ttl: ttl(0, 500_000_000),
                ..request("s")
            },
            Code::InvalidArgument,
            "ttl: must be a whole number of seconds (JWT times are in seconds)".into(),
        ),
        (
            "ttl above max",
            pb::IssueTokenRequest {
                ttl: ttl(3601, 0),
                ..request("s")
            },
            Code::InvalidArgument,
            "ttl: is above the maximum of 3600s".into(),
        ),
        (
            "claims not JSON",
            pb::IssueTokenRequest {
                claims_json: "{nope".into(),
                ..request("s")
            },
            Code::InvalidArgument,
            "claims_json: is not a valid JSON object: key must be a string at line 1 column 2"
                .into(),
        ),
        (
            "claims an array",
            pb::IssueTokenRequest {
                claims_json: "[1,2]".into(),
                ..request("s")
            },
            Code::InvalidArgument,
            "claims_json: must be a JSON object".into(),
        ),
        (
            "claims duplicate",
            pb::IssueTokenRequest {
                claims_json: r#"{"a":1,"a":2}"#.into(),
                ..request("s")
            },
            Code::InvalidArgument,
            "claims_json: is not a valid JSON object: duplicate member \"a\" at line 1 column 10"
                .into(),
        ),
        (
            "empty audience",
            pb::IssueTokenRequest {
                audience: vec!["".into()],
                ..request("s")
            },
            Code::InvalidArgument,
            "audience: holds an empty entry".into(),
        ),
        (
            "too many audiences",
            pb::IssueTokenRequest {
                audience: (0..17).map(|i| format!("a{i}")).collect(),
                ..request("s")
            },
            Code::InvalidArgument,
            "audience: has more than 16 entries".into(),
        ),
    ];
    let mut cases = cases;
    // Control (Cc), format (Cf) and line/paragraph separator (Zl, Zp) characters: invisible
    // in logs, splitting a log line, or making one name look like another.
    for (field, value, message) in [
        (
            "audience",
            "led\nger",
            "audience: contains a control character (U+000A)",
        ),
        (
            "audience",
            "ledger\0",
            "audience: contains a control character (U+0000)",
        ),
        (
            "audience",
            "ad\u{200b}min",
            "audience: contains an invisible format character (U+200B)",
        ),
        (
            "subject",
            "admin\u{202e}nimda",
            "subject: contains an invisible format character (U+202E)",
        ),
        (
            "subject",
            "ad\u{200b}min",
            "subject: contains an invisible format character (U+200B)",
        ),
        (
            "subject",
            "a\u{2066}b",
            "subject: contains an invisible format character (U+2066)",
        ),
        (
            "subject",
            "\u{feff}admin",
            "subject: contains an invisible format character (U+FEFF)",
        ),
        (
            "subject",
            "svc\u{7f}",
            "subject: contains a control character (U+007F)",
        ),
        (
            "subject",
            "svc\u{2028}forged",
            "subject: contains a line or paragraph separator (U+2028)",
        ),
        (
            "audience",
            "ledger\u{2029}",
            "audience: contains a line or paragraph separator (U+2029)",
        ),
    ] {
        let req = if field == "subject" {
            request(value)
        } else {
            pb::IssueTokenRequest {
                audience: vec![value.into()],
                ..request("s")
            }
        };
        cases.push((
            "hidden character",
            req,
            Code::InvalidArgument,
            format!("{message}, which would make one name look like another"),
        ));
    }
    for reserved in ["iss", "sub", "aud", "exp", "nbf", "iat", "jti", "status"] {
        cases.push((
            "reserved claim",
            pb::IssueTokenRequest {
                claims_json: format!(r#"{{"{reserved}":1}}"#),
                ..request("s")
            },
            Code::InvalidArgument,
            format!("claims_json: sets the reserved claim \"{reserved}\"; the authority sets iss, sub, aud, exp, nbf, iat, jti and status itself"),
        ));
    }
    for (name, req, code, message) in cases {
        let status = server.client.clone().issue_token(req).await.unwrap_err();
        assert_eq!(
            (status.code(), status.message()),
            (code, message.as_str()),
            "{name}"
        );
    }
    server.stop().await;
}

/// One size limit governs issuing and verifying: the largest claims that fit give a token
/// VerifyToken accepts; one byte more is refused, naming the size and the limit.
#[tokio::test]
async fn issued_tokens_never_exceed_what_verify_token_accepts() {
    let dir = DataDir::new();
    // Tokens without a status: its index, handed out in a random order, would change their
    // length by a few bytes from one call to the next, and the bisection needs a length
    // that only the claims move.
    let server =
        TestServer::start_with(crate::helpers::config(&dir, &["--status-min-ttl", "off"])).await;
    let issue = |pad: usize| {
        let mut client = server.client.clone();
        async move {
            client
                .issue_token(pb::IssueTokenRequest {
                    claims_json: format!(r#"{{"pad":"{}"}}"#, "x".repeat(pad)),
                    audience: vec!["api".into()],
                    ..request("svc")
                })
                .await
        }
    };
    // The largest pad that issues: the token's length grows with it, so bisect.
    let (mut fits, mut too_long) = (0, 8192);
    issue(fits).await.unwrap();
    assert!(oversize(issue(too_long).await) > 8192);
    while too_long - fits > 1 {
        let mid = (fits + too_long) / 2;
        match issue(mid).await {
            Ok(_) => fits = mid,
            Err(status) => {
                oversize(Err(status));
                too_long = mid;
            }
        }
    }
    let token = issue(fits).await.unwrap().into_inner().token;
    assert!(token.len() <= 8192 && token.len() > 8180, "{}", token.len());
    let verdict = server.verify(&token, "api").await;
    assert!(verdict.valid, "{verdict:?}");

    // One more byte of claims grows the base64url token by one or two.
    let over = oversize(issue(fits + 1).await);
    assert!(over > 8192 && over <= token.len() + 2, "{over}");
    // 6 KB of claims used to give an 8,625-byte token VerifyToken refused.
    assert!(oversize(issue(6000).await) > 8192);
    server.stop().await;
}

/// The size the refusal of a too-large token names, checked to be that refusal.
fn oversize(result: Result<tonic::Response<pb::IssueTokenResponse>, tonic::Status>) -> usize {
    let status = result.expect_err("a token over the limit was issued");
    let size = status
        .message()
        .strip_prefix("claims_json: the token would be ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|size| size.parse().ok())
        .unwrap_or_else(|| panic!("{status:?}"));
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::InvalidArgument,
            format!("claims_json: the token would be {size} bytes, over the 8192-byte limit of VerifyToken (and of many proxies' headers); make the claims smaller").as_str()
        )
    );
    size
}

/// Bytes that are not the request message are the caller's mistake.
#[tokio::test]
async fn requests_that_do_not_decode_are_invalid_argument() {
    use bytes::{Buf as _, BufMut as _};
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

    /// Sends raw bytes as the message.
    #[derive(Clone, Copy, Default)]
    struct Raw;
    impl Codec for Raw {
        type Encode = Vec<u8>;
        type Decode = Vec<u8>;
        type Encoder = Raw;
        type Decoder = Raw;
        fn encoder(&mut self) -> Raw {
            Raw
        }
        fn decoder(&mut self) -> Raw {
            Raw
        }
    }
    impl Encoder for Raw {
        type Item = Vec<u8>;
        type Error = tonic::Status;
        fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
            dst.put_slice(&item);
            Ok(())
        }
    }
    impl Decoder for Raw {
        type Item = Vec<u8>;
        type Error = tonic::Status;
        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
            Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
        }
    }

    let dir = DataDir::new();
    let server = TestServer::start(&dir).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let cases: [(&str, &'static str, Vec<u8>, &str); 4] = [
        (
            "invalid UTF-8 in subject",
            "/tokenauthority.v1.TokenAuthority/IssueToken",
            vec![0x0A, 2, 0xFF, 0xFE],
            "invalid string value",
        ),
        (
            "subject with a varint wire type",
            "/tokenauthority.v1.TokenAuthority/IssueToken",
            vec![0x08, 1],
            "invalid wire type",
        ),
        (
            "truncated token",
            "/tokenauthority.v1.TokenAuthority/VerifyToken",
            vec![0x0A, 10, b'e', b'y'],
            "buffer underflow",
        ),
        (
            "invalid UTF-8 in token",
            "/tokenauthority.v1.TokenAuthority/VerifyToken",
            vec![0x0A, 1, 0xC0],
            "invalid string value",
        ),
    ];
    for (name, path, bytes, detail) in cases {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.unwrap();
        let status = grpc
            .unary(
                tonic::Request::new(bytes),
                tonic::codegen::http::uri::PathAndQuery::from_static(path),
                Raw,
            )
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{name}: {status:?}");
        assert!(
            status.message().starts_with(
                "the request message does not decode: failed to decode Protobuf message"
            ),
            "{name}: {status:?}"
        );
        assert!(status.message().contains(detail), "{name}: {status:?}");
    }
    server.stop().await;
}
