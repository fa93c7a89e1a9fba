//! A throwaway PKI for TLS tests, made with rcgen: a CA that issues server certificates and
//! client certificates (with `spiffe://` URI SANs and DNS SANs), expired ones, and PEM files
//! written where a server can read them.
//!
//! ```text
//! let pki = Pki::new();                       // a CA
//! let server = pki.server(&["localhost", "127.0.0.1"]);
//! let client = pki.client(Some("spiffe://cluster.local/ns/a/sa/b"), None);
//! let (cert, key) = server.write(dir, "server");
//! let ca = pki.write_ca(dir, "ca");
//! let stranger = Pki::named("untrusted CA").client(None, Some("svc.example"));
//! ```

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

/// A certificate authority.
pub struct Pki {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its private key.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key (PKCS#8), PEM.
    pub key_pem: String,
    /// The certificate, DER: what a peer sees in the handshake.
    pub der: Vec<u8>,
}

impl Pki {
    /// A new CA named "token-authority test CA".
    pub fn new() -> Pki {
        Pki::named("token-authority test CA")
    }

    /// A new CA with this common name (e.g. a second, untrusted CA).
    pub fn named(name: &str) -> Pki {
        Pki::with_params(name, CertificateParams::new(Vec::<String>::new()).unwrap())
    }

    /// A new CA with this common name, valid from a minute ago until `not_after` (unix
    /// seconds).
    pub fn named_until(name: &str, not_after: u64) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        valid_until(&mut params, not_after);
        Pki::with_params(name, params)
    }

    fn with_params(name: &str, mut params: CertificateParams) -> Pki {
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Pki { issuer }
    }

    /// The CA certificate, PEM: what a client or the server's `--client-ca` trusts.
    pub fn ca_pem(&self) -> String {
        self.issuer.pem()
    }

    /// Writes the CA certificate to `dir/<name>.pem`.
    pub fn write_ca(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(format!("{name}.pem"));
        std::fs::write(&path, self.ca_pem()).unwrap();
        path
    }

    /// A server certificate for these names: IP addresses become IP SANs, others DNS SANs.
    pub fn server(&self, names: &[&str]) -> Identity {
        self.sign(server_params(names))
    }

    /// A server certificate like `server`'s, valid from a minute ago until `not_after` (unix
    /// seconds).
    pub fn server_until(&self, names: &[&str], not_after: u64) -> Identity {
        let mut params = server_params(names);
        valid_until(&mut params, not_after);
        self.sign(params)
    }

    /// A client certificate with an optional URI SAN (e.g. `spiffe://...`) and DNS SAN.
    pub fn client(&self, uri: Option<&str>, dns: Option<&str>) -> Identity {
        self.sign(client_params(uri, dns))
    }

    /// A client certificate that expired yesterday (valid for a day before that).
    pub fn client_expired(&self, uri: Option<&str>, dns: Option<&str>) -> Identity {
        let mut params = client_params(uri, dns);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let day = 24 * 3600;
        params.not_before = rcgen::date_time_ymd(1970, 1, 1) + time_seconds(now - 2 * day);
        params.not_after = rcgen::date_time_ymd(1970, 1, 1) + time_seconds(now - day);
        self.sign(params)
    }

    /// A client certificate valid from a minute ago until `not_after` (unix seconds).
    pub fn client_until(&self, uri: Option<&str>, dns: Option<&str>, not_after: u64) -> Identity {
        let mut params = client_params(uri, dns);
        valid_until(&mut params, not_after);
        self.sign(params)
    }

    /// A client certificate with exactly these subject alternative names.
    pub fn client_with_sans(&self, sans: Vec<SanType>) -> Identity {
        let mut params = client_params(None, None);
        params.subject_alt_names = sans;
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Identity {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Identity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}

fn server_params(names: &[&str]) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, names[0]);
    params.subject_alt_names = names
        .iter()
        .map(|name| match name.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName((*name).try_into().unwrap()),
        })
        .collect();
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params
}

/// Valid from a minute ago until `not_after` (unix seconds).
fn valid_until(params: &mut CertificateParams, not_after: u64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    params.not_before = rcgen::date_time_ymd(1970, 1, 1) + time_seconds(now - 60);
    params.not_after = rcgen::date_time_ymd(1970, 1, 1) + time_seconds(not_after as i64);
}

fn client_params(uri: Option<&str>, dns: Option<&str>) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, uri.or(dns).unwrap_or("test client"));
    params.subject_alt_names = uri
        .map(|uri| SanType::URI(uri.try_into().unwrap()))
        .into_iter()
        .chain(dns.map(|dns| SanType::DnsName(dns.try_into().unwrap())))
        .collect();
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params
}

/// rcgen's dates are `time` values; this avoids naming that crate here.
fn time_seconds(seconds: i64) -> std::time::Duration {
    std::time::Duration::from_secs(seconds as u64)
}

impl Identity {
    /// Writes `dir/<name>.crt` and `dir/<name>.key`; returns (cert, key) paths.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, &self.cert_pem).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        (cert, key)
    }
}
