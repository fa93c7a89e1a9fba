//! The flags as `serve` parses and checks them.

use clap::Parser as _;

use super::*;

fn parse(extra: &[&str]) -> Result<Config, String> {
    let mut argv = vec!["token-authority", "serve"];
    argv.extend_from_slice(extra);
    let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
    let Command::Serve(args) = cli.command else {
        unreachable!("serve was parsed")
    };
    Config::try_from(args).map_err(|e| e.to_string())
}

#[test]
fn a_postgres_store_needs_a_kek_and_an_admin_token_and_sled_takes_no_database_flags() {
    assert!(parse(&[]).unwrap().store.is_none());
    let err = parse(&["--store", "postgres://ta@db/keys"]).unwrap_err();
    assert!(err.contains("needs --kek-file"), "{err}");
    // Replicas share one admin token, and keep nothing on disk to generate one into.
    let err = parse(&["--store", "postgres://ta@db/keys", "--kek-file", "/kek"]).unwrap_err();
    assert!(err.contains("needs --admin-token-file"), "{err}");
    let config = parse(&[
        "--store",
        "postgres://ta@db/keys?sslmode=verify-full",
        "--kek-file",
        "/kek",
        "--admin-token-file",
        "/admin",
        "--store-password-file",
        "/pw",
    ])
    .unwrap();
    let store = config.store.unwrap();
    assert_eq!(store.password_file, Some(PathBuf::from("/pw")));
    let err = parse(&["--store-password-file", "/pw"]).unwrap_err();
    assert!(err.contains("need a postgres://"), "{err}");
    let err = parse(&["--store", "mysql://db"]).unwrap_err();
    assert!(err.contains("`sled` or a postgres:// URL"), "{err}");
}

#[test]
fn defaults() {
    let config = parse(&[]).unwrap();
    assert_eq!(config.default_ttl, 900);
    assert_eq!(config.max_ttl, 86400);
    assert_eq!(config.leeway, 60);
    assert_eq!(config.grpc_listen.to_string(), "127.0.0.1:50051");
    assert_eq!(config.http_listen.to_string(), "127.0.0.1:8080");
    assert_eq!(config.data_dir, PathBuf::from("./data"));
    assert_eq!(config.limits.max_connections_per_ip, 256);
    assert_eq!(config.watch.max_watchers_per_ip, 256);
    let config = parse(&["--max-watchers", "10"]).unwrap();
    assert_eq!(config.watch.max_watchers_per_ip, 3);
    assert_eq!(config.limits.max_connection_age, Duration::from_secs(3600));
}

#[test]
fn bad_values_are_refused_with_the_flag_named() {
    // (flags, the first line of the error users see)
    let cases: &[(&[&str], &str)] = &[
        (&["--max-ttl", "soon"], "error: invalid value 'soon' for '--max-ttl <MAX_TTL>': expected number at 0"),
        (&["--default-ttl", "2h", "--max-ttl", "1h"], "invalid configuration: --default-ttl (7200s) is above --max-ttl (3600s)"),
        (&["--default-ttl", "0s"], "invalid configuration: --default-ttl must be at least 1s"),
        (&["--leeway", "1500ms"], "invalid configuration: --leeway must be a whole number of seconds"),
        (&["--grpc-listen", "localhost"], "error: invalid value 'localhost' for '--grpc-listen <GRPC_LISTEN>': invalid socket address syntax"),
        (&["--issuer", "ftp://x"], "invalid configuration: --issuer \"ftp://x\" must be an http(s) URL without whitespace or a trailing slash"),
        (&["--issuer", "https://x/"], "invalid configuration: --issuer \"https://x/\" must be an http(s) URL without whitespace or a trailing slash"),
        (&["--log-format", "xml"], "error: invalid value 'xml' for '--log-format <LOG_FORMAT>'"),
        (&["--algorithms", "RS256,HS256"], "invalid configuration: --algorithms: \"HS256\" is not one of RS256, PS256, ES256, EdDSA (names are case-sensitive)"),
        (&["--algorithms", "es256"], "invalid configuration: --algorithms: \"es256\" is not one of RS256, PS256, ES256, EdDSA (names are case-sensitive)"),
        (&["--algorithms", "RS256,RS256"], "invalid configuration: --algorithms names RS256 twice"),
        (&["--max-connections", "0"], "invalid configuration: --max-connections must be between 1 and 1000000"),
        (&["--max-connections-per-ip", "0"], "invalid configuration: --max-connections-per-ip must be between 1 and --max-connections"),
        (&["--max-connections", "8", "--max-connections-per-ip", "9"], "invalid configuration: --max-connections-per-ip must be between 1 and --max-connections"),
        (&["--max-watchers-per-ip", "0"], "invalid configuration: --max-watchers-per-ip must be between 1 and --max-watchers"),
        (&["--max-watchers", "8", "--max-watchers-per-ip", "9"], "invalid configuration: --max-watchers-per-ip must be between 1 and --max-watchers"),
        (&["--max-connection-age", "10ms"], "invalid configuration: --max-connection-age must be at least 100ms"),
        (&["--handshake-timeout", "0s"], "invalid configuration: --handshake-timeout must be at least 100ms"),
        (&["--idle-timeout", "10ms"], "invalid configuration: --idle-timeout must be at least 100ms"),
        (&["--tls-reload-interval", "0s"], "invalid configuration: --tls-reload-interval must be at least 100ms"),
        // Times worked out from these (an activation, a deletion, a list's exp) once overflowed.
        (&["--rotation-period", "18446744073709551615s"], "invalid configuration: --rotation-period must be at most 10 years"),
        (&["--publish-lead", "18446744073709551615s"], "invalid configuration: --publish-lead must be at most 10 years"),
        (&["--jwks-max-age", "11years", "--publish-lead", "11years"], "invalid configuration: --publish-lead must be at most 10 years"),
        (&["--status-list-ttl", "2000000000000000000s"], "invalid configuration: --status-list-ttl must be at most 7 days: a revoked token would be accepted for as long by verifiers holding the list"),
        (&["--max-ttl", "367d"], "invalid configuration: --max-ttl must be at most 366 days"),
    ];
    for (args, expected) in cases {
        let err = parse(args).unwrap_err();
        assert_eq!(err.lines().next(), Some(*expected), "{args:?}");
    }
}

#[test]
fn plaintext_and_tls_flag_rules() {
    let cases: &[(&[&str], Option<&str>)] = &[
        (&[], None),
        (&["--grpc-listen", "[::1]:1"], None),
        (
            &["--grpc-listen", "0.0.0.0:50051"],
            Some("invalid configuration: --grpc-listen 0.0.0.0:50051 is not a loopback address: give --tls-cert and --tls-key, or --allow-plaintext when a proxy or mesh terminates TLS"),
        ),
        (
            &["--http-listen", "10.0.0.1:8080"],
            Some("invalid configuration: --http-listen 10.0.0.1:8080 is not a loopback address: give --tls-cert and --tls-key, or --allow-plaintext when a proxy or mesh terminates TLS"),
        ),
        (&["--grpc-listen", "0.0.0.0:1", "--allow-plaintext"], None),
        (
            &["--grpc-listen", "0.0.0.0:1", "--tls-cert", "c", "--tls-key", "k"],
            None,
        ),
        (
            &["--tls-cert", "c"],
            Some("invalid configuration: --tls-cert needs --tls-key"),
        ),
        (
            &["--tls-key", "k"],
            Some("invalid configuration: --tls-key needs --tls-cert"),
        ),
        (
            &["--client-ca", "ca"],
            Some("invalid configuration: --client-ca needs --tls-cert and --tls-key"),
        ),
    ];
    for (args, expected) in cases {
        match (parse(args), expected) {
            (Ok(_), None) => {}
            (Err(err), Some(expected)) => assert_eq!(&err, expected, "{args:?}"),
            (result, expected) => panic!("{args:?}: {result:?}, expected {expected:?}"),
        }
    }
}

/// Where traces go: the flags, else the standard variables (the traces-specific one
/// first), nothing without either, and `OTEL_SDK_DISABLED=true` over all.
#[test]
fn trace_settings_come_from_the_flags_then_the_otel_variables() {
    use super::trace_settings;
    use crate::telemetry::TraceSettings;
    type Case<'a> = (
        Option<&'a str>,
        Option<&'a str>,
        &'a [(&'a str, &'a str)],
        Result<Option<(&'a str, Option<&'a str>)>, &'a str>,
    );
    let cases: &[Case] = &[
        (None, None, &[], Ok(None)),
        (Some("http://c:4317"), None, &[], Ok(Some(("http://c:4317", None)))),
        (
            None,
            None,
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://all:4317")],
            Ok(Some(("http://all:4317", None))),
        ),
        (
            None,
            None,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://all:4317"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4317"),
            ],
            Ok(Some(("http://traces:4317", None))),
        ),
        (
            Some("https://flag:4317"),
            None,
            &[
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4317"),
                ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/etc/ca.pem"),
            ],
            Ok(Some(("https://flag:4317", Some("/etc/ca.pem")))),
        ),
        (
            Some("https://flag:4317"),
            Some("/flag/ca.pem"),
            &[("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "/etc/ca.pem")],
            Ok(Some(("https://flag:4317", Some("/flag/ca.pem")))),
        ),
        (
            Some("http://c:4317"),
            None,
            &[("OTEL_SDK_DISABLED", "true")],
            Ok(None),
        ),
        (
            Some("c:4317"),
            None,
            &[],
            Err("invalid configuration: --otlp-endpoint \"c:4317\": give the collector as http://host:port or https://host:port"),
        ),
        (
            Some("http://c:4317"),
            Some("/ca.pem"),
            &[],
            Err("invalid configuration: --otlp-ca-file needs an https:// collector, not \"http://c:4317\""),
        ),
        // Credentials in the URL would be logged with it; the refusal does not echo them.
        (
            Some("http://user:S3CRET@c:4317"),
            None,
            &[],
            Err("invalid configuration: --otlp-endpoint carries credentials (user:password@): give the collector as http(s)://host:port, and its credentials in OTEL_EXPORTER_OTLP_HEADERS"),
        ),
        (
            None,
            None,
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://u:p@c:4317/v1")],
            Err("invalid configuration: --otlp-endpoint carries credentials (user:password@): give the collector as http(s)://host:port, and its credentials in OTEL_EXPORTER_OTLP_HEADERS"),
        ),
        // Set for every signal, the variable means nothing to an http:// collector.
        (
            None,
            None,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://all:4317"),
                ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/etc/ca.pem"),
            ],
            Ok(Some(("http://all:4317", None))),
        ),
    ];
    for (endpoint, ca, env, expected) in cases {
        let got = trace_settings(
            endpoint.map(str::to_owned),
            ca.map(std::path::PathBuf::from),
            |name| {
                env.iter()
                    .find(|(key, _)| *key == name)
                    .map(|(_, value)| (*value).to_owned())
            },
        );
        let expected = expected
            .map(|settings| {
                settings.map(|(endpoint, ca)| TraceSettings {
                    endpoint: endpoint.to_owned(),
                    ca_file: ca.map(std::path::PathBuf::from),
                    queue_capacity: crate::telemetry::traces::DEFAULT_QUEUE_CAPACITY,
                    headers: Default::default(),
                })
            })
            .map_err(str::to_owned);
        assert_eq!(
            got.map_err(|e| e.to_string()),
            expected,
            "{endpoint:?} {ca:?} {env:?}"
        );
    }
}

/// The headers sent with every export: the traces-specific variable over the general one.
#[test]
fn collector_headers_come_from_the_traces_variable_first() {
    use super::trace_settings;
    use crate::telemetry::traces::CollectorHeaders;
    let headers = |env: &[(&str, &str)]| {
        trace_settings(Some("http://c:4317".into()), None, |name| {
            env.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_owned())
        })
        .unwrap()
        .expect("traces are on")
        .headers
    };
    let parsed = |value| CollectorHeaders::parse("", value).unwrap();
    assert_eq!(headers(&[]), CollectorHeaders::default());
    assert_eq!(
        headers(&[("OTEL_EXPORTER_OTLP_HEADERS", "a=1")]),
        parsed("a=1")
    );
    assert_eq!(
        headers(&[
            ("OTEL_EXPORTER_OTLP_HEADERS", "a=1"),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "b=2"),
        ]),
        parsed("b=2")
    );
}

#[test]
fn the_trace_queue_follows_otel_bsp_max_queue_size() {
    use super::trace_settings;
    let refusal = |value: &str| {
        format!(
            "invalid configuration: OTEL_BSP_MAX_QUEUE_SIZE {value:?}: give a number of spans from 1 to 1048576"
        )
    };
    let cases: &[(Option<&str>, Result<usize, String>)] = &[
        (None, Ok(4096)),
        (Some(""), Ok(4096)),
        (Some("64"), Ok(64)),
        (Some("1048576"), Ok(1_048_576)),
        (Some("0"), Err(refusal("0"))),
        (Some("1048577"), Err(refusal("1048577"))),
        (Some("-1"), Err(refusal("-1"))),
        (Some("many"), Err(refusal("many"))),
    ];
    for (value, expected) in cases {
        let got = trace_settings(Some("http://c:4317".into()), None, |name| {
            (name == "OTEL_BSP_MAX_QUEUE_SIZE")
                .then(|| value.map(str::to_owned))
                .flatten()
        })
        .map(|settings| settings.expect("traces are on").queue_capacity)
        .map_err(|e| e.to_string());
        assert_eq!(&got, expected, "{value:?}");
    }
}

/// The variables the SDK reads for itself are checked at start, each refusal naming what to
/// give: the SDK would take a wrong value without a word.
#[test]
fn the_sdk_variables_are_checked_at_start() {
    use super::trace_settings;
    type Case<'a> = (&'a [(&'a str, &'a str)], Result<(), &'a str>);
    let cases: &[Case] = &[
        (&[], Ok(())),
        (&[("OTEL_BSP_SCHEDULE_DELAY", "")], Ok(())),
        (&[("OTEL_BSP_SCHEDULE_DELAY", "1")], Ok(())),
        (&[("OTEL_BSP_SCHEDULE_DELAY", "5000")], Ok(())),
        (
            &[("OTEL_BSP_SCHEDULE_DELAY", "0")],
            Err("invalid configuration: OTEL_BSP_SCHEDULE_DELAY \"0\": give the milliseconds between exports, at least 1"),
        ),
        (
            &[("OTEL_BSP_SCHEDULE_DELAY", "soon")],
            Err("invalid configuration: OTEL_BSP_SCHEDULE_DELAY \"soon\": give the milliseconds between exports, at least 1"),
        ),
        (&[("OTEL_TRACES_SAMPLER", "parentbased_always_on")], Ok(())),
        (&[("OTEL_TRACES_SAMPLER", "always_off")], Ok(())),
        (
            &[("OTEL_TRACES_SAMPLER", "bogus")],
            Err("invalid configuration: OTEL_TRACES_SAMPLER \"bogus\": give one of always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio"),
        ),
        (
            &[("OTEL_TRACES_SAMPLER", "traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "0.01")],
            Ok(()),
        ),
        (
            &[("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "abc")],
            Err("invalid configuration: OTEL_TRACES_SAMPLER_ARG \"abc\": give the share of traces to sample, from 0 to 1"),
        ),
        (
            &[("OTEL_TRACES_SAMPLER", "traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "1.5")],
            Err("invalid configuration: OTEL_TRACES_SAMPLER_ARG \"1.5\": give the share of traces to sample, from 0 to 1"),
        ),
        // An argument other samplers do not read is not theirs to refuse.
        (
            &[("OTEL_TRACES_SAMPLER", "always_on"), ("OTEL_TRACES_SAMPLER_ARG", "abc")],
            Ok(()),
        ),
        // The exporter's own: headers (never echoed), and no compression.
        (&[("OTEL_EXPORTER_OTLP_HEADERS", "api-key=s3cret")], Ok(())),
        (
            &[("OTEL_EXPORTER_OTLP_HEADERS", "s3cret")],
            Err("invalid configuration: OTEL_EXPORTER_OTLP_HEADERS: entry 1 is not name=value (entries are separated by commas)"),
        ),
        (
            &[
                ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=good"),
                ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "a=b,s3cret"),
            ],
            Err("invalid configuration: OTEL_EXPORTER_OTLP_TRACES_HEADERS: entry 2 is not name=value (entries are separated by commas)"),
        ),
        (&[("OTEL_EXPORTER_OTLP_COMPRESSION", "none")], Ok(())),
        (&[("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "NONE")], Ok(())),
        (
            &[("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")],
            Err("invalid configuration: OTEL_EXPORTER_OTLP_COMPRESSION \"gzip\": spans are sent uncompressed; set it to none or unset it"),
        ),
        (
            &[
                ("OTEL_EXPORTER_OTLP_COMPRESSION", "none"),
                ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "zstd"),
            ],
            Err("invalid configuration: OTEL_EXPORTER_OTLP_TRACES_COMPRESSION \"zstd\": spans are sent uncompressed; set it to none or unset it"),
        ),
    ];
    for (env, expected) in cases {
        let got = trace_settings(Some("http://c:4317".into()), None, |name| {
            env.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_owned())
        })
        .map(|_| ())
        .map_err(|e| e.to_string());
        assert_eq!(got, expected.map_err(str::to_owned), "{env:?}");
    }
}
