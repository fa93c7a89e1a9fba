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
    let cases: &[(&[&str], &str)] = &[
        (&["--max-ttl", "soon"], "--max-ttl"),
        (&["--default-ttl", "2h", "--max-ttl", "1h"], "--default-ttl"),
        (&["--default-ttl", "0s"], "--default-ttl"),
        (&["--leeway", "1500ms"], "--leeway"),
        (&["--grpc-listen", "localhost"], "--grpc-listen"),
        (&["--issuer", "ftp://x"], "--issuer"),
        (&["--issuer", "https://x/"], "--issuer"),
        (&["--log-format", "xml"], "--log-format"),
        (&["--algorithms", "RS256,HS256"], "--algorithms"),
        (&["--algorithms", "es256"], "--algorithms"),
        (&["--algorithms", "RS256,RS256"], "--algorithms"),
        (&["--max-connections", "0"], "--max-connections"),
        (
            &["--max-connections-per-ip", "0"],
            "--max-connections-per-ip",
        ),
        (
            &["--max-connections", "8", "--max-connections-per-ip", "9"],
            "--max-connections-per-ip",
        ),
        (&["--max-watchers-per-ip", "0"], "--max-watchers-per-ip"),
        (
            &["--max-watchers", "8", "--max-watchers-per-ip", "9"],
            "--max-watchers-per-ip",
        ),
        (&["--max-connection-age", "10ms"], "--max-connection-age"),
        (&["--handshake-timeout", "0s"], "--handshake-timeout"),
        (&["--idle-timeout", "10ms"], "--idle-timeout"),
        (&["--tls-reload-interval", "0s"], "--tls-reload-interval"),
    ];
    for (args, flag) in cases {
        let err = parse(args).unwrap_err();
        assert!(err.contains(flag), "{args:?}: {err}");
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
