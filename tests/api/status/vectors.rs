//! The draft's encoding vectors (bits 1, 2, 4 and 8): our encoder's `lst` for each, read by
//! an independent decoder (Python's zlib, `tests/clients/status_list_decode.py`), which
//! also checks the vectors against the draft's own `lst`. Our decoder reads the draft's.

use std::{collections::BTreeMap, path::PathBuf};

use token_authority_jose::status_list::{Status, StatusList};

use crate::tools;

#[derive(serde::Deserialize)]
struct Vector {
    name: String,
    bits: u8,
    size: u64,
    statuses: BTreeMap<String, u8>,
    lst: String,
}

#[test]
fn draft_vectors_decode_independently() {
    let clients = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients");
    let vectors_path = clients.join("status_list_vectors.json");
    let vectors: Vec<Vector> =
        serde_json::from_slice(&std::fs::read(&vectors_path).unwrap()).unwrap();
    assert_eq!(vectors.len(), 6);
    let mut ours = serde_json::Map::new();
    for vector in &vectors {
        let mut list = StatusList::new(vector.bits, vector.size).unwrap();
        for (index, value) in &vector.statuses {
            list.set(index.parse().unwrap(), Status::from_value(*value))
                .unwrap();
        }
        // Ours reads the draft's encoding as the same list.
        let theirs = StatusList::decode(vector.bits.into(), &vector.lst, 1 << 24).unwrap();
        assert_eq!(theirs, list, "{}", vector.name);
        ours.insert(vector.name.clone(), list.encode().into());
    }
    let dir = tempfile::tempdir().unwrap();
    let ours_path = dir.path().join("ours.json");
    std::fs::write(&ours_path, serde_json::to_vec(&ours).unwrap()).unwrap();
    let output = std::process::Command::new(tools::python())
        .arg(clients.join("status_list_decode.py"))
        .arg(&vectors_path)
        .arg(&ours_path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for vector in &vectors {
        assert!(stdout.contains(&format!("{}: ok", vector.name)), "{stdout}");
    }
}
