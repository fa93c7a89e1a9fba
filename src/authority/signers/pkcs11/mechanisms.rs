//! Which PKCS#11 mechanisms each JWS algorithm needs, and the check that a token offers them.

use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use token_authority_jose::crypto::Algorithm;

use super::error::Pkcs11Error;

/// RSA keys are made with this modulus length.
pub(super) const RSA_BITS: u16 = 2048;

/// What a mechanism is needed for, as the check reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Purpose {
    Signing,
    KeyGeneration,
}

impl Purpose {
    pub(super) fn describe(self) -> &'static str {
        match self {
            Purpose::Signing => "signing",
            Purpose::KeyGeneration => "key pair generation",
        }
    }
}

/// The mechanism that signs for `alg`.
pub(super) fn sign_mechanism_type(alg: Algorithm) -> MechanismType {
    match alg {
        Algorithm::RS256 => MechanismType::SHA256_RSA_PKCS,
        Algorithm::PS256 => MechanismType::SHA256_RSA_PKCS_PSS,
        Algorithm::ES256 => MechanismType::ECDSA,
        Algorithm::EdDSA => MechanismType::EDDSA,
    }
}

/// The mechanism that makes key pairs for `alg`.
fn keygen_mechanism_type(alg: Algorithm) -> MechanismType {
    match alg {
        Algorithm::RS256 | Algorithm::PS256 => MechanismType::RSA_PKCS_KEY_PAIR_GEN,
        Algorithm::ES256 => MechanismType::ECC_KEY_PAIR_GEN,
        Algorithm::EdDSA => MechanismType::ECC_EDWARDS_KEY_PAIR_GEN,
    }
}

/// Every mechanism the algorithms need, in the order they are checked.
pub(super) fn required(algorithms: &[Algorithm]) -> Vec<(Algorithm, MechanismType, Purpose)> {
    algorithms
        .iter()
        .flat_map(|&alg| {
            [
                (alg, sign_mechanism_type(alg), Purpose::Signing),
                (alg, keygen_mechanism_type(alg), Purpose::KeyGeneration),
            ]
        })
        .collect()
}

/// The first mechanism the algorithms need that `offered` (the mechanisms the token offers
/// for their use) lacks, as the error `open` reports.
pub(super) fn check_mechanisms(
    label: &str,
    offered: &[MechanismType],
    algorithms: &[Algorithm],
) -> Result<(), Pkcs11Error> {
    match required(algorithms)
        .into_iter()
        .find(|(_, mechanism, _)| !offered.contains(mechanism))
    {
        Some((alg, mechanism, purpose)) => Err(missing(label, alg, mechanism, purpose)),
        None => Ok(()),
    }
}

fn missing(label: &str, alg: Algorithm, mechanism: MechanismType, purpose: Purpose) -> Pkcs11Error {
    Pkcs11Error::MechanismMissing {
        label: label.to_owned(),
        mechanism: mechanism.to_string(),
        purpose: purpose.describe(),
        alg,
    }
}

/// RSASSA-PSS as JWS PS256 defines it (RFC 7518 §3.5): SHA-256, MGF1 with SHA-256, a salt as
/// long as the hash.
const PS256_PARAMS: PkcsPssParams = PkcsPssParams {
    hash_alg: MechanismType::SHA256,
    mgf: PkcsMgfType::MGF1_SHA256,
    s_len: cryptoki::types::Ulong::new(32),
};

/// The signing mechanism with its parameters. ES256 signs a SHA-256 digest computed by the
/// caller; EdDSA is pure Ed25519 (no parameters).
pub(super) fn sign_mechanism(alg: Algorithm) -> Mechanism<'static> {
    match alg {
        Algorithm::RS256 => Mechanism::Sha256RsaPkcs,
        Algorithm::PS256 => Mechanism::Sha256RsaPkcsPss(PS256_PARAMS),
        Algorithm::ES256 => Mechanism::Ecdsa,
        Algorithm::EdDSA => Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
    }
}

pub(super) fn keygen_mechanism(alg: Algorithm) -> Mechanism<'static> {
    match alg {
        Algorithm::RS256 | Algorithm::PS256 => Mechanism::RsaPkcsKeyPairGen,
        Algorithm::ES256 => Mechanism::EccKeyPairGen,
        Algorithm::EdDSA => Mechanism::EccEdwardsKeyPairGen,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_without_an_algorithms_mechanism_is_refused_with_a_line_naming_the_fix() {
        let offered = [
            MechanismType::SHA256_RSA_PKCS,
            MechanismType::SHA256_RSA_PKCS_PSS,
            MechanismType::RSA_PKCS_KEY_PAIR_GEN,
            MechanismType::ECDSA,
            MechanismType::ECC_KEY_PAIR_GEN,
            MechanismType::ECC_EDWARDS_KEY_PAIR_GEN,
        ];
        let rsa_and_ec = [Algorithm::RS256, Algorithm::PS256, Algorithm::ES256];
        check_mechanisms("hsm", &offered, &rsa_and_ec).unwrap();
        let error = check_mechanisms("hsm", &offered, Algorithm::ALL).unwrap_err();
        assert_eq!(
            error.to_string(),
            "token \"hsm\" does not offer CKM_EDDSA for signing, which EdDSA needs; enable it on the token or stop configuring EdDSA"
        );
        assert!(!error.is_transient());

        let without_keygen: Vec<MechanismType> = offered
            .iter()
            .copied()
            .filter(|m| *m != MechanismType::ECC_KEY_PAIR_GEN)
            .collect();
        let error = check_mechanisms("hsm", &without_keygen, &[Algorithm::ES256]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "token \"hsm\" does not offer CKM_EC_KEY_PAIR_GEN for key pair generation, which ES256 needs; enable it on the token or stop configuring ES256"
        );
        check_mechanisms("hsm", &without_keygen, &[Algorithm::RS256]).unwrap();
    }

    #[test]
    fn every_algorithm_needs_its_signing_and_key_generation_mechanism() {
        let all = required(Algorithm::ALL);
        assert_eq!(all.len(), 8);
        let offered: Vec<MechanismType> = all.iter().map(|(_, m, _)| *m).collect();
        check_mechanisms("t", &offered, Algorithm::ALL).unwrap();
        check_mechanisms("t", &[], &[]).unwrap();
        for (alg, mechanism, purpose) in all {
            let without: Vec<MechanismType> = offered
                .iter()
                .copied()
                .filter(|m| *m != mechanism)
                .collect();
            let error = check_mechanisms("t", &without, &[alg]).unwrap_err();
            assert!(
                matches!(&error, Pkcs11Error::MechanismMissing { alg: a, purpose: p, .. }
                    if *a == alg && *p == purpose.describe()),
                "{error}"
            );
        }
    }
}
