//! Container images written by hand for `scan`: a config and a classic `docker save` archive.

use std::path::Path;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// `sha256:HEX`, as image manifests name blobs.
pub fn sha(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// An image config with these layers (`diff_ids`), environment, labels and history.
pub fn config(diff_ids: &[String], env: &[&str], labels: Value, history: &[&str]) -> Value {
    json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Env": env, "Labels": labels, "Cmd": ["/bin/app"], "Entrypoint": ["/init"] },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "history": history.iter().map(|h| json!({ "created_by": h })).collect::<Vec<_>>(),
    })
}

/// A classic `docker save` archive: manifest.json, HEX.json config, ID/layer.tar layers.
pub fn docker_save(out: &Path, layers: &[Vec<u8>], env: &[&str], history: &[&str]) {
    let diff_ids: Vec<String> = layers.iter().map(|l| sha(l)).collect();
    let config = config(&diff_ids, env, json!({}), history).to_string();
    let config_name = format!("{}.json", &sha(config.as_bytes())[7..]);
    let mut b = tar::Builder::new(std::fs::File::create(out).unwrap());
    let mut add = |path: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, path, data).unwrap();
    };
    add(&config_name, config.as_bytes());
    let mut paths = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let path = format!("layer{i}/layer.tar");
        add(&path, l);
        paths.push(path);
    }
    let manifest = json!([{ "Config": config_name, "RepoTags": ["app:1"], "Layers": paths }]);
    add("manifest.json", manifest.to_string().as_bytes());
    b.finish().unwrap();
}
