//! Finding a token's slot by its label, and checking what the token offers.

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::MechanismType;
use cryptoki::slot::Slot;
use token_authority_jose::crypto::Algorithm;

use super::error::{failed, Pkcs11Error};
use super::mechanisms::{self, Purpose, RSA_BITS};
use super::module::Module;

/// The slot of the initialised token labelled `label`. A slot whose token cannot be read
/// (a token deleted under a running module) is skipped, not fatal to the search.
pub(super) fn find(module: &Module, label: &str) -> Result<Slot, Pkcs11Error> {
    let wanted = label.trim_end_matches(' ');
    let mut found = Vec::new();
    let slots = module
        .pkcs11()
        .get_slots_with_token()
        .map_err(failed(label, "listing its slots"))?;
    for slot in slots {
        let Ok(info) = module.pkcs11().get_token_info(slot) else {
            continue;
        };
        if !info.token_initialized() {
            continue;
        }
        if info.label() == wanted {
            return Ok(slot);
        }
        found.push(info.label().to_owned());
    }
    Err(Pkcs11Error::TokenNotFound {
        label: label.to_owned(),
        found,
    })
}

/// Checks that the token offers, for the use each algorithm makes of it, every mechanism
/// the algorithms need (RSA key generation: at `RSA_BITS`). Each is asked for by type:
/// the token's whole list would make cryptoki log every type it does not know.
pub(super) fn check_mechanisms(
    module: &Module,
    slot: Slot,
    label: &str,
    algorithms: &[Algorithm],
) -> Result<(), Pkcs11Error> {
    let mut offered = Vec::new();
    for (_, mechanism, purpose) in mechanisms::required(algorithms) {
        let info = match module.pkcs11().get_mechanism_info(slot, mechanism) {
            Ok(info) => info,
            Err(CkError::Pkcs11(RvError::MechanismInvalid, _)) => continue,
            Err(source) => return Err(failed(label, "describing a mechanism")(source)),
        };
        let usable = match purpose {
            Purpose::Signing => info.sign(),
            Purpose::KeyGeneration => {
                info.generate_key_pair()
                    && (mechanism != MechanismType::RSA_PKCS_KEY_PAIR_GEN
                        || (info.min_key_size()..=info.max_key_size())
                            .contains(&usize::from(RSA_BITS)))
            }
        };
        if usable {
            offered.push(mechanism);
        }
    }
    mechanisms::check_mechanisms(label, &offered, algorithms)
}
