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
    let cases: Vec<(&str, pb::IssueTokenRequest, Code, &str)> = vec![
        (
            "empty subject",
            request(""),
            Code::InvalidArgument,
            "subject: is required",
        ),
        (
            "blank subject",
            request("  "),
            Code::InvalidArgument,
            "subject: is required",
        ),
        (
            "long subject",
            request(&long),
            Code::InvalidArgument,
            "subject: is longer than 1024 bytes",
        ),
        (
            "zero ttl",
            pb::IssueTokenRequest {
                ttl: ttl(0, 0),
                ..request("s")
            },
            Code::InvalidArgument,
            "ttl: must be positive",
        ),
        (
            "negative ttl",
            pb::IssueTokenRequest {
                ttl: ttl(-60, 0),
                ..request("s")
            },
            Code::InvalidArgument,
            "ttl: must be positive",
        ),
        (
            "sub-second ttl",
            pb::IssueTokenRequest {
                ttl: ttl(0, 500_000_000),
                ..request("s")
            },
            Code::InvalidArgument,
            "ttl: must be a whole number of seconds",
        ),
        (
            "ttl above max",
            pb::IssueTokenRequest {
                ttl: ttl(3601, 0),
                ..request("s")
            },
            Code::InvalidArgument,
            "ttl: is above the maximum of 3600s",
        ),
        (
            "claims not JSON",
            pb::IssueTokenRequest {
                claims_json: "{nope".into(),
                ..request("s")
            },
            Code::InvalidArgument,
            "claims_json: is not a valid JSON object",
        ),
        (
            "claims an array",
            pb::IssueTokenRequest {
                claims_json: "[1,2]".into(),
                ..request("s")
            },
            Code::InvalidArgument,
            "claims_json: must be a JSON object",
        ),
        (
            "claims duplicate",
            pb::IssueTokenRequest {
                claims_json: r#"{"a":1,"a":2}"#.into(),
                ..request("s")
            },
            Code::InvalidArgument,
            "duplicate member",
        ),
        (
            "empty audience",
            pb::IssueTokenRequest {
                audience: vec!["".into()],
                ..request("s")
            },
            Code::InvalidArgument,
            "audience: holds an empty entry",
        ),
        (
            "too many audiences",
            pb::IssueTokenRequest {
                audience: (0..17).map(|i| format!("a{i}")).collect(),
                ..request("s")
            },
            Code::InvalidArgument,
            "audience: has more than 16 entries",
        ),
    ];
    let mut cases = cases;
    for reserved in ["iss", "sub", "aud", "exp", "nbf", "iat", "jti"] {
        cases.push((
            "reserved claim",
            pb::IssueTokenRequest {
                claims_json: format!(r#"{{"{reserved}":1}}"#),
                ..request("s")
            },
            Code::InvalidArgument,
            "claims_json: sets the reserved claim",
        ));
    }
    for (name, req, code, message) in cases {
        let status = server.client.clone().issue_token(req).await.unwrap_err();
        assert_eq!(status.code(), code, "{name}: {status:?}");
        assert!(
            status.message().contains(message),
            "{name}: {:?}",
            status.message()
        );
    }
    server.stop().await;
}
