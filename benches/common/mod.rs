//! What the in-process benches share: a real authority and its gRPC service.

use std::sync::Arc;

use token_authority::{
    authority::signing_pool::SigningPool,
    authority::{Authority, Settings},
    callers::admin::AdminToken,
    callers::{CallerSettings, Callers},
    config::WatchSettings,
    metrics::Metrics,
    store::KeyStore,
    transport::{grpc::GrpcService, watch::Watchers},
};
use token_authority_jose::{clock::Clock, crypto::Algorithm};

pub const ISSUER: &str = "https://token-authority.bench";

pub const ALGORITHMS: [Algorithm; 4] = [
    Algorithm::RS256,
    Algorithm::PS256,
    Algorithm::ES256,
    Algorithm::EdDSA,
];

/// A real authority over a real sled keystore in a temporary directory.
pub fn service(dir: &std::path::Path) -> (GrpcService, Arc<Authority>) {
    let (store, records) = KeyStore::open(&dir.join("keystore"), None).unwrap();
    let settings = Settings {
        issuer: ISSUER.into(),
        default_ttl: 300,
        max_ttl: 3600,
        leeway: 30,
        max_token_bytes: 16 * 1024,
        algorithms: ALGORITHMS.to_vec(),
        publish_lead: 900,
        rotation_period: 86_400,
        clock: Clock::system(),
        signers: Default::default(),
    };
    let now = settings.clock.unix_now();
    let authority = Arc::new(Authority::open(store, records, settings, now).unwrap());
    let metrics = Arc::new(Metrics::new(&ALGORITHMS));
    // No policy on a loopback listener: IssueToken open, as `serve` runs by default.
    let callers = Callers::new(
        Arc::new(AdminToken::new("bench-admin-token")),
        Arc::clone(&metrics),
        CallerSettings {
            loopback: true,
            leeway: 60,
            max_token_bytes: 8 * 1024,
            own_issuer: ISSUER.into(),
        },
        None,
        None,
    );
    let watchers = Arc::new(Watchers::new(
        WatchSettings {
            max_watchers: 1,
            max_watchers_per_ip: 1,
            keepalive: std::time::Duration::from_secs(30),
            send_timeout: std::time::Duration::from_secs(10),
        },
        tokio_util::sync::CancellationToken::new(),
        metrics.watchers.clone(),
    ));
    let service = GrpcService::new(
        Arc::clone(&authority),
        Arc::new(callers),
        metrics,
        Arc::new(SigningPool::per_core().unwrap()),
        watchers,
    );
    (service, authority)
}
