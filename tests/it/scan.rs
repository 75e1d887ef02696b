//! `irsa-secrets scan` on images this file crafts: docker-save archives and OCI layouts (dir and
//! tar), gzip, zstd and plain layers, multi-platform indexes, attestations; secrets in every
//! place an image can hold one; hostile archives. Every run's output is checked for the secret.

use crate::common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Output;

use base64::Engine as _;
use common::image::{config, docker_save, sha};
use common::Radioactive;
use serde_json::{json, Value};

/// The value passed with --secret; never to appear in any output.
const SECRET: &str = "s3cr3t-Token/with+chars&more-0123456789abcdef";

const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const PLAIN: &str = "application/vnd.oci.image.layer.v1.tar";

fn radioactive() -> Radioactive {
    let r = Radioactive::default();
    r.watch(SECRET.as_bytes());
    let b64 = base64::engine::general_purpose::STANDARD.encode(SECRET);
    r.watch(&b64.as_bytes()[..b64.len() - 4]);
    r.watch(urlencode(SECRET).as_bytes());
    r
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// One member of a crafted layer.
enum E<'a> {
    File(&'a str, Vec<u8>),
    Symlink(&'a str, &'a str),
    /// A header written byte for byte, bypassing the tar crate's own path checks.
    Raw(Box<tar::Header>, Vec<u8>),
}

fn layer(entries: Vec<E<'_>>) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        match e {
            E::File(path, data) => {
                let mut h = tar::Header::new_gnu();
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                b.append_data(&mut h, path, &data[..]).unwrap();
            }
            E::Symlink(path, target) => {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, path, target).unwrap();
            }
            E::Raw(h, data) => b.append(&h, &data[..]).unwrap(),
        }
    }
    b.into_inner().unwrap()
}

/// A GNU header with `name` written as is (so `../` paths can be crafted).
fn raw_header(name: &[u8], kind: tar::EntryType, size: u64) -> Box<tar::Header> {
    let mut h = tar::Header::new_gnu();
    h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_cksum();
    Box::new(h)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 1).unwrap()
}

/// An OCI layout being written into a directory.
struct Oci {
    dir: PathBuf,
}

impl Oci {
    fn new(dir: &Path) -> Oci {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Oci {
            dir: dir.to_path_buf(),
        }
    }

    fn blob(&self, bytes: &[u8], media_type: &str) -> Value {
        let digest = sha(bytes);
        std::fs::write(self.dir.join("blobs/sha256").join(&digest[7..]), bytes).unwrap();
        json!({ "mediaType": media_type, "digest": digest, "size": bytes.len() })
    }

    /// A manifest for `layers` (uncompressed tar, compressed blob, media type) and its config.
    fn manifest(
        &self,
        layers: &[(Vec<u8>, Vec<u8>, &str)],
        env: &[&str],
        labels: Value,
        history: &[&str],
    ) -> Value {
        let diff_ids: Vec<String> = layers.iter().map(|(tar, _, _)| sha(tar)).collect();
        let config = config(&diff_ids, env, labels, history);
        let config = self.blob(
            config.to_string().as_bytes(),
            "application/vnd.oci.image.config.v1+json",
        );
        let layers: Vec<Value> = layers
            .iter()
            .map(|(_, blob, mt)| self.blob(blob, mt))
            .collect();
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config,
            "layers": layers,
        });
        self.blob(
            manifest.to_string().as_bytes(),
            "application/vnd.oci.image.manifest.v1+json",
        )
    }

    fn index(&self, manifests: Vec<Value>) {
        let index = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        });
        std::fs::write(self.dir.join("index.json"), index.to_string()).unwrap();
    }
}

/// A one-manifest OCI layout in `dir`.
/// An OCI layout whose one layer holds [`SECRET`] in the file `leak`.
fn leaky_image(dir: &Path) -> PathBuf {
    let oci = dir.join("oci");
    oci_image(
        &oci,
        &[gz_layer(vec![E::File("leak", SECRET.as_bytes().to_vec())])],
        &[],
        json!({}),
        &[],
    );
    oci
}

fn oci_image(
    dir: &Path,
    layers: &[(Vec<u8>, Vec<u8>, &str)],
    env: &[&str],
    labels: Value,
    history: &[&str],
) {
    let oci = Oci::new(dir);
    let m = oci.manifest(layers, env, labels, history);
    oci.index(vec![m]);
}

fn gz_layer(entries: Vec<E<'_>>) -> (Vec<u8>, Vec<u8>, &'static str) {
    let tar = layer(entries);
    let gz = gzip(&tar);
    (tar, gz, GZIP)
}

fn zst_layer(entries: Vec<E<'_>>) -> (Vec<u8>, Vec<u8>, &'static str) {
    let tar = layer(entries);
    let z = zstd(&tar);
    (tar, z, ZSTD)
}

/// Packs a directory into a tar file (an OCI tar, `docker save` output).
fn tar_dir(dir: &Path, out: &Path) {
    let mut b = tar::Builder::new(std::fs::File::create(out).unwrap());
    b.follow_symlinks(false);
    b.append_dir_all(".", dir).unwrap();
    b.finish().unwrap();
}

/// Runs `scan IMAGE --secret id=app-token,env=SCAN_SECRET ARGS...` and checks its output.
fn scan(image: &Path, args: &[&str]) -> Output {
    let mut cmd = common::command();
    cmd.arg("scan")
        .arg(image)
        .args(["--secret", "id=app-token,env=SCAN_SECRET"])
        .args(args)
        .env("SCAN_SECRET", SECRET);
    common::run(&mut cmd, &radioactive())
}

fn json_report(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn findings(out: &Output) -> Vec<Value> {
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected findings; stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    json_report(out)["findings"].as_array().unwrap().clone()
}

fn fails_with(out: &Output, message: &str) {
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "expected an error; stderr: {stderr}"
    );
    assert!(
        stderr.contains(message),
        "expected {message:?} in: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

fn noise(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| b"abcdefghijklmnopqrstuvwxyz 0123456789\n"[(i * 7 + i / 13) % 38])
        .collect()
}

#[test]
fn clean_images_exit_0_in_every_layout() {
    let dir = tempfile::tempdir().unwrap();
    let files = || {
        vec![
            E::File("etc/app.conf", b"region = eu-west-1\n".to_vec()),
            E::File("usr/share/big", noise(3 << 20)),
            E::Symlink("usr/bin/app", "../share/big"),
        ]
    };
    let oci = dir.path().join("oci");
    oci_image(
        &oci,
        &[gz_layer(files()), zst_layer(files())],
        &["PATH=/usr/bin"],
        json!({"org.opencontainers.image.title": "app"}),
        &["RUN make"],
    );
    let oci_tar = dir.path().join("oci.tar");
    tar_dir(&oci, &oci_tar);
    let save = dir.path().join("save.tar");
    docker_save(&save, &[layer(files())], &["PATH=/usr/bin"], &["COPY . /"]);
    for image in [&oci, &oci_tar, &save] {
        let out = scan(image, &[]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {stdout}{}",
            image.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("no secrets found"), "{stdout}");
    }
}

#[test]
fn a_secret_in_a_file_is_found_with_layer_path_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let tar = layer(vec![
        E::File("README", b"hello".to_vec()),
        E::File(
            "app/config.log",
            format!("configure: token={SECRET}\n").into_bytes(),
        ),
    ]);
    let save = dir.path().join("save.tar");
    docker_save(
        &save,
        &[layer(vec![E::File("bin/sh", noise(100))]), tar.clone()],
        &[],
        &[],
    );
    let f = findings(&scan(&save, &["--format", "json"]));
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0]["blob"], sha(&tar));
    assert_eq!(f[0]["blob_kind"], "layer");
    assert_eq!(f[0]["path"], "app/config.log");
    assert_eq!(f[0]["place"], "content");
    assert_eq!(f[0]["offset"], "configure: token=".len());
    assert_eq!(f[0]["detector"], "secret app-token");
    assert!(
        f[0]["snippet"]
            .as_str()
            .unwrap()
            .starts_with("s3cr…[redacted"),
        "{f:?}"
    );
}

#[test]
fn secrets_in_file_names_and_link_targets_are_found_and_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let name = format!("tmp/{SECRET}.txt");
    let target = format!("/run/{SECRET}");
    let oci = dir.path().join("oci");
    oci_image(
        &oci,
        &[zst_layer(vec![
            E::File(&name, b"x".to_vec()),
            E::Symlink("etc/link", &target),
        ])],
        &[],
        json!({}),
        &[],
    );
    let out = scan(&oci, &["--format", "json"]);
    let f = findings(&out);
    let places: Vec<_> = f.iter().map(|f| f["place"].as_str().unwrap()).collect();
    assert_eq!(places, ["file name", "link target"], "{f:?}");
    assert_eq!(f[0]["offset"], 4);
    assert!(
        f[0]["path"]
            .as_str()
            .unwrap()
            .starts_with("tmp/s3cr…[redacted"),
        "{f:?}"
    );
    assert_eq!(f[1]["path"], "etc/link");
}

#[test]
fn secrets_in_the_config_are_found_by_field() {
    let dir = tempfile::tempdir().unwrap();
    let oci = dir.path().join("oci.tar");
    let layout = dir.path().join("layout");
    let env = format!("APP_TOKEN={SECRET}");
    let history = format!("RUN |1 TOKEN={SECRET} /bin/sh -c make");
    oci_image(
        &layout,
        &[gz_layer(vec![E::File("a", b"a".to_vec())])],
        &["PATH=/bin", &env],
        json!({ "token": SECRET }),
        &["ADD rootfs /", &history],
    );
    tar_dir(&layout, &oci);
    let f = findings(&scan(&oci, &["--format", "json"]));
    let paths: Vec<_> = f.iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert_eq!(
        paths,
        [
            "config.Env[1]",
            "config.Labels.token",
            "history[1].created_by"
        ],
        "{f:?}"
    );
    assert!(f.iter().all(|f| f["blob_kind"] == "config"), "{f:?}");
    assert_eq!(f[0]["offset"], "APP_TOKEN=".len());
}

#[test]
fn encoded_forms_are_found() {
    let dir = tempfile::tempdir().unwrap();
    let b64 = |prefix: &str| {
        base64::engine::general_purpose::STANDARD.encode(format!("{prefix}{SECRET}\n"))
    };
    let content = format!(
        "auth0: {}\nauth1: {}\nauth2: {}\nurl: https://x/?t={}&y=1\n",
        b64(""),
        b64("u:"),
        b64("user:"),
        urlencode(SECRET)
    );
    let oci = dir.path().join("oci");
    oci_image(
        &oci,
        &[gz_layer(vec![E::File("etc/auth", content.into_bytes())])],
        &[],
        json!({}),
        &[],
    );
    let f = findings(&scan(&oci, &["--format", "json"]));
    let detectors: Vec<_> = f.iter().map(|f| f["detector"].as_str().unwrap()).collect();
    assert_eq!(
        detectors,
        [
            "secret app-token (base64)",
            "secret app-token (base64)",
            "secret app-token (base64)",
            "secret app-token (URL-encoded)"
        ],
        "{f:?}"
    );
}

#[test]
fn a_secret_spanning_a_read_boundary_is_found_once_at_its_offset() {
    let dir = tempfile::tempdir().unwrap();
    // The scanner reads about 1 MiB at a time: copies of the secret every 64 bytes from just
    // before 1 MiB to well after it make some copy straddle each boundary, whatever its
    // exact place (960 copies: under the 1000 findings a report lists).
    let mut content = noise(3 << 20);
    let offsets: Vec<usize> = (0..960).map(|k| (1 << 20) - (16 << 10) + 64 * k).collect();
    for &at in &offsets {
        content[at..at + SECRET.len()].copy_from_slice(SECRET.as_bytes());
    }
    let oci = dir.path().join("oci");
    oci_image(
        &oci,
        &[gz_layer(vec![E::File("data.bin", content)])],
        &[],
        json!({}),
        &[],
    );
    let f = findings(&scan(&oci, &["--format", "json"]));
    let found: Vec<_> = f
        .iter()
        .map(|f| f["offset"].as_u64().unwrap() as usize)
        .collect();
    assert_eq!(found, offsets);
}

#[test]
fn generic_detectors_run_without_any_configured_secret() {
    let dir = tempfile::tempdir().unwrap();
    let creds = format!(
        "[default]\naws_access_key_id = {HOSTILE_KEY}\naws_secret_access_key = {HOSTILE_SECRET}\n"
    );
    let token = common::token(3600, 0);
    let save = dir.path().join("save.tar");
    docker_save(
        &save,
        &[layer(vec![
            E::File("root/.aws/credentials", creds.as_bytes().to_vec()),
            E::File("var/run/token", token.clone().into_bytes()),
        ])],
        &[],
        &[],
    );
    let radioactive = Radioactive::default();
    radioactive.watch(HOSTILE_SECRET.as_bytes());
    radioactive.watch(&HOSTILE_KEY.as_bytes()[4..]);
    radioactive.watch(token.as_bytes());
    let mut cmd = common::command();
    cmd.args(["scan", "--format", "json"]).arg(&save);
    let out = common::run(&mut cmd, &radioactive);
    let f = findings(&out);
    let detectors: Vec<_> = f.iter().map(|f| f["detector"].as_str().unwrap()).collect();
    assert_eq!(
        detectors,
        [
            "aws-access-key-id",
            "aws-secret-access-key",
            "jwt (sts.amazonaws.com audience)"
        ],
        "{f:?}"
    );
    let notes = json_report(&out)["notes"].to_string();
    assert!(notes.contains("only the generic detectors"), "{notes}");
}

/// A password as ecr:GetAuthorizationToken hands one out: base64 of a JSON envelope around
/// an encrypted payload and data key (random here).
fn synthetic_ecr_password() -> String {
    let b64 = |n: usize| {
        let mut bytes = vec![0u8; n];
        rand::fill(&mut bytes[..]);
        base64::engine::general_purpose::STANDARD.encode(bytes)
    };
    let envelope = format!(
        r#"{{"payload":"{}","datakey":"{}","version":"2","type":"DATA_KEY","expiration":1700000000}}"#,
        b64(1200),
        b64(180)
    );
    base64::engine::general_purpose::STANDARD.encode(envelope)
}

#[test]
fn ecr_registry_passwords_are_found_by_shape_without_any_configured_secret() {
    let dir = tempfile::tempdir().unwrap();
    let password = synthetic_ecr_password();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("AWS:{password}"));
    let docker_config = json!({
        "auths": { "123456789012.dkr.ecr.us-east-1.amazonaws.com": { "auth": auth } }
    });
    let oci = dir.path().join("oci");
    oci_image(
        &oci,
        &[gz_layer(vec![
            E::File("etc/ecr-password", format!("{password}\n").into_bytes()),
            E::File(
                "root/.docker/config.json",
                docker_config.to_string().into_bytes(),
            ),
        ])],
        &[&format!("REGISTRY_PASSWORD={password}")],
        json!({}),
        &[],
    );
    // Past their fixed starts (which snippets may show), neither form may be printed.
    let radioactive = Radioactive::default();
    radioactive.watch(&password.as_bytes()[16..]);
    radioactive.watch(&auth.as_bytes()[24..]);
    let mut cmd = common::command();
    cmd.args(["scan", "--format", "json"]).arg(&oci);
    let f = findings(&common::run(&mut cmd, &radioactive));
    let found: Vec<_> = f
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap(),
                f["detector"].as_str().unwrap(),
                f["offset"].as_u64().unwrap(),
            )
        })
        .collect();
    let auth_at = docker_config.to_string().find(&auth).unwrap() as u64;
    assert_eq!(
        found,
        [
            ("config.Env[0]", "ecr-registry-password", 18),
            ("etc/ecr-password", "ecr-registry-password", 0),
            (
                "root/.docker/config.json",
                "ecr-registry-password (docker auth: base64 of AWS:password)",
                auth_at
            ),
        ],
        "{f:?}"
    );
    let mut cmd = common::command();
    cmd.args(["scan", "--format", "sarif"]).arg(&oci);
    let sarif = json_report(&common::run(&mut cmd, &radioactive));
    assert_eq!(
        sarif["runs"][0]["results"][2]["ruleId"],
        "ecr-registry-password"
    );
    let mut cmd = common::command();
    cmd.arg("scan").arg(&oci);
    let text = common::run(&mut cmd, &radioactive);
    assert_eq!(text.status.code(), Some(1));
}

#[test]
fn every_platform_and_attestation_of_an_index_is_scanned() {
    let dir = tempfile::tempdir().unwrap();
    let oci = Oci::new(&dir.path().join("oci"));
    let amd = oci.manifest(
        &[gz_layer(vec![E::File("a", b"clean".to_vec())])],
        &[],
        json!({}),
        &[],
    );
    let arm = oci.manifest(
        &[gz_layer(vec![E::File("leak", SECRET.as_bytes().to_vec())])],
        &[],
        json!({}),
        &[],
    );
    let statement = json!({ "predicate": { "buildArgs": { "TOKEN": SECRET } } });
    let att_layer = oci.blob(
        statement.to_string().as_bytes(),
        "application/vnd.in-toto+json",
    );
    let att_config = oci.blob(b"{}", "application/vnd.oci.image.config.v1+json");
    let att = oci.blob(
        json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": att_config,
            "layers": [att_layer],
        })
        .to_string()
        .as_bytes(),
        "application/vnd.oci.image.manifest.v1+json",
    );
    let with = |mut d: Value, key: &str, v: Value| {
        d[key] = v;
        d
    };
    let missing = json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": sha(b"not here"), "size": 8,
        "platform": { "os": "linux", "architecture": "s390x" },
    });
    let nested = oci.blob(
        json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                with(amd, "platform", json!({"os": "linux", "architecture": "amd64"})),
                with(arm, "platform", json!({"os": "linux", "architecture": "arm64"})),
                with(att, "annotations", json!({"vnd.docker.reference.type": "attestation-manifest"})),
                missing,
            ],
        })
        .to_string()
        .as_bytes(),
        "application/vnd.oci.image.index.v1+json",
    );
    oci.index(vec![with(
        nested,
        "annotations",
        json!({ "org.opencontainers.image.description": format!("built with {SECRET}") }),
    )]);
    let out = scan(&oci.dir, &["--format", "json"]);
    let f = findings(&out);
    let places: Vec<_> = f
        .iter()
        .map(|f| {
            format!(
                "{} {}",
                f["blob_kind"].as_str().unwrap(),
                f["path"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        places,
        [
            "index manifests[0].annotations.org.opencontainers.image.description",
            "layer leak",
            "blob predicate.buildArgs.TOKEN",
        ],
        "{f:?}"
    );
    let notes = json_report(&out)["notes"].to_string();
    assert!(
        notes.contains("linux/s390x) is not in the archive"),
        "{notes}"
    );
}

#[test]
fn text_and_sarif_reports_carry_findings_but_never_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let oci = leaky_image(dir.path());
    let out = scan(&oci, &[]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("leak (content at offset 0): secret app-token: s3cr…[redacted"),
        "{text}"
    );
    let out = scan(&oci, &["--format", "sarif"]);
    assert_eq!(out.status.code(), Some(1));
    let sarif = json_report(&out);
    assert_eq!(sarif["version"], "2.1.0");
    assert_eq!(sarif["runs"][0]["results"][0]["ruleId"], "secret/app-token");
}

#[test]
fn the_library_entry_point_reports_findings() {
    let dir = tempfile::tempdir().unwrap();
    let oci = leaky_image(dir.path());
    let mut needles = irsa_secrets::scan::Needles::default();
    needles.add(
        "app-token",
        irsa_secrets::secret::SecretValue::from(SECRET.to_string()),
    );
    let report = irsa_secrets::scan::scan_path(&oci, &needles).unwrap();
    assert_eq!(report.findings.len(), 1);
    assert_eq!(report.findings[0].path, "leak");
    let clean = irsa_secrets::scan::scan_path(&oci, &Default::default()).unwrap();
    assert!(clean.findings.is_empty());
}

// Hostile archives: each is refused with a clear message and exit 2, never a panic.

#[test]
fn a_digest_mismatch_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let oci = dir.path().join("oci");
    let (tar, mut gz, mt) = gz_layer(vec![E::File("a", noise(1000))]);
    let digest = sha(&gz);
    oci_image(&oci, &[(tar, gz.clone(), mt)], &[], json!({}), &[]);
    let last = gz.len() - 1;
    gz[last] ^= 0xff;
    std::fs::write(oci.join("blobs/sha256").join(&digest[7..]), &gz).unwrap();
    fails_with(&scan(&oci, &[]), "digest mismatch");
}

#[test]
fn a_truncated_gzip_layer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let oci = dir.path().join("oci");
    let (tar, gz, mt) = gz_layer(vec![E::File("a", noise(200_000))]);
    let truncated = gz[..gz.len() / 2].to_vec();
    oci_image(&oci, &[(tar, truncated, mt)], &[], json!({}), &[]);
    let out = scan(&oci, &[]);
    fails_with(&out, "(gzip): incomplete deflate stream");
}

#[test]
fn a_path_climbing_out_of_the_root_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let oci = dir.path().join("oci");
    let tar = layer(vec![E::Raw(
        raw_header(b"../../etc/cron.d/evil", tar::EntryType::Regular, 4),
        b"evil".to_vec(),
    )]);
    oci_image(&oci, &[(tar.clone(), tar, PLAIN)], &[], json!({}), &[]);
    fails_with(
        &scan(&oci, &[]),
        "member 0 (the header at byte 0): its path climbs out of the archive root",
    );

    // In docker save's manifest.json, a layer path that points outside the archive.
    let save = dir.path().join("save.tar");
    docker_save(&save, &[layer(vec![E::File("a", b"a".to_vec())])], &[], &[]);
    let patched = dir.path().join("patched.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&patched).unwrap());
    let mut archive = tar::Archive::new(std::fs::File::open(&save).unwrap());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
        let path = entry.path().unwrap().into_owned();
        if path == Path::new("manifest.json") {
            data = String::from_utf8(data)
                .unwrap()
                .replace("layer0/layer.tar", "../../../etc/passwd")
                .into_bytes();
        }
        let mut h = entry.header().clone();
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, &data[..]).unwrap();
    }
    b.finish().unwrap();
    drop(b);
    fails_with(
        &scan(&patched, &[]),
        "manifest.json [0].Layers[0]: the path naming it: its path climbs out",
    );
}

#[test]
fn a_huge_extension_header_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let oci = dir.path().join("oci");
    let long_name = vec![b'a'; 2 << 20];
    let tar = layer(vec![
        E::Raw(
            raw_header(
                b"././@LongLink",
                tar::EntryType::GNULongName,
                long_name.len() as u64,
            ),
            long_name,
        ),
        E::File("x", b"x".to_vec()),
    ]);
    oci_image(&oci, &[gz_layer_from(tar)], &[], json!({}), &[]);
    fails_with(
        &scan(&oci, &[]),
        "extension header of 2097152 bytes exceeds the limit",
    );
}

/// A PAX record, `LEN key=value\n`, whose length counts its own digits.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut record = format!("{len} {key}=").into_bytes();
    record.extend_from_slice(value);
    record.push(b'\n');
    record
}

#[test]
fn pax_headers_chained_past_the_limit_are_refused_without_their_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let oci = dir.path().join("oci");
    // Each header is well under the 1 MiB limit; forty of them before one file are 20 MiB.
    // Random letters: no newline (PAX records are lines), and too random for a bomb.
    let mut value = HOSTILE_KEY.as_bytes().to_vec();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    value.extend((0..512 << 10).map(|_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        b'a' + (x % 26) as u8
    }));
    let record = pax_record("comment", &value);
    let mut entries: Vec<E<'_>> = (0..40)
        .map(|_| {
            let h = raw_header(b"pax", tar::EntryType::XHeader, record.len() as u64);
            E::Raw(h, record.clone())
        })
        .collect();
    entries.push(E::File("x", b"x".to_vec()));
    oci_image(&oci, &[gz_layer_from(layer(entries))], &[], json!({}), &[]);
    // The second header already takes the total past 1 MiB.
    let message = format!(
        "tar extension headers of {} bytes in all before member 0 (the header at byte 0) \
         exceed the limit of 1048576 bytes",
        2 * record.len()
    );
    fails_without_echo(&oci, &message, &value);
}

#[test]
fn a_report_lists_the_first_thousand_findings_and_counts_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let oci = dir.path().join("oci");
    let keys: String = (0..1500).map(|i| format!("AKIA{i:016}\n")).collect();
    oci_image(
        &oci,
        &[gz_layer(vec![E::File("keys", keys.into_bytes())])],
        &[],
        json!({}),
        &[],
    );
    let out = scan_generic(&oci, &["--format", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let report = json_report(&out);
    assert_eq!(report["findings"].as_array().unwrap().len(), 1000);
    assert_eq!(report["omitted"], 500, "{report}");
    let out = scan_generic(&oci, &[]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("... and 500 more, not listed (a report lists the first 1000)\n"),
        "{text}"
    );
    assert!(text.contains(": 1500 findings ("), "{text}");
    assert_eq!(
        text.lines().filter(|l| l.contains("[fingerprint ")).count(),
        1000
    );
    let sarif = json_report(&scan_generic(&oci, &["--format", "sarif"]));
    assert_eq!(sarif["runs"][0]["properties"]["omitted"], 500);
}

fn gz_layer_from(tar: Vec<u8>) -> (Vec<u8>, Vec<u8>, &'static str) {
    let gz = gzip(&tar);
    (tar, gz, GZIP)
}

#[test]
fn decompression_bombs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    // Ratio: 24 MiB of zeros compress to a few kilobytes, far beyond 200:1 past the 16 MiB floor.
    let oci = dir.path().join("ratio");
    let bomb = layer(vec![E::File("zeros", vec![0; 24 << 20])]);
    let z = zstd(&bomb);
    oci_image(&oci, &[(bomb, z, ZSTD)], &[], json!({}), &[]);
    fails_with(&scan(&oci, &[]), "decompression bomb");
    // Absolute: a flag-set cap on any layer's decompressed size.
    let oci = dir.path().join("absolute");
    oci_image(
        &oci,
        &[gz_layer(vec![E::File("data", noise(3 << 20))])],
        &[],
        json!({}),
        &[],
    );
    fails_with(
        &scan(&oci, &["--max-layer-size", "1M"]),
        "decompression bomb: more than 1048576 bytes",
    );
    assert_eq!(
        scan(&oci, &["--max-layer-size", "8M"]).status.code(),
        Some(0)
    );
}

#[test]
fn a_link_loop_in_the_archive_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let save = dir.path().join("save.tar");
    let tar = layer(vec![E::File("a", b"a".to_vec())]);
    let config = config(&[sha(&tar)], &[], json!({}), &[]).to_string();
    let config_name = format!("{}.json", &sha(config.as_bytes())[7..]);
    let manifest = json!([{ "Config": config_name, "Layers": ["l1/layer.tar"] }]).to_string();
    let mut b = tar::Builder::new(std::fs::File::create(&save).unwrap());
    for (path, data) in [
        (config_name.as_str(), config.as_bytes()),
        ("manifest.json", manifest.as_bytes()),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, data).unwrap();
    }
    for (path, target) in [
        ("l1/layer.tar", "../l2/layer.tar"),
        ("l2/layer.tar", "../l1/layer.tar"),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, path, target).unwrap();
    }
    b.finish().unwrap();
    drop(b);
    fails_with(&scan(&save, &[]), "link loop");
}

#[test]
fn not_an_image_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    fails_with(
        &scan(dir.path(), &[]),
        "neither index.json (OCI layout) nor manifest.json",
    );
    fails_with(&scan(&dir.path().join("missing.tar"), &[]), "cannot read");
}

/// A stand-in Docker Engine on a unix socket: answers each `GET /images/get` with `status` and
/// `body`, and records the request lines.
fn fake_engine(
    dir: &Path,
    status: &'static str,
    body: Vec<u8>,
) -> (PathBuf, std::sync::mpsc::Receiver<String>) {
    use std::io::{BufRead, BufReader};
    let socket = dir.join("docker.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(4) {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let _ = tx.send(line.trim_end().to_string());
            loop {
                let mut header = String::new();
                reader.read_line(&mut header).unwrap();
                if header.trim().is_empty() {
                    break;
                }
            }
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/x-tar\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes()).unwrap();
            stream.write_all(&body).unwrap();
        }
    });
    (socket, rx)
}

#[test]
fn docker_images_are_read_through_the_engine_api() {
    let dir = tempfile::tempdir().unwrap();
    let save = dir.path().join("save.tar");
    docker_save(
        &save,
        &[layer(vec![E::File("leak", SECRET.as_bytes().to_vec())])],
        &[],
        &[],
    );
    let (socket, requests) = fake_engine(dir.path(), "200 OK", std::fs::read(&save).unwrap());
    let mut cmd = common::command();
    cmd.args([
        "scan",
        "docker://registry.example/app:1",
        "--format",
        "json",
    ])
    .args(["--secret", "id=app-token,env=SCAN_SECRET"])
    .env("SCAN_SECRET", SECRET)
    .env("DOCKER_HOST", format!("unix://{}", socket.display()));
    let out = common::run(&mut cmd, &radioactive());
    let f = findings(&out);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0]["path"], "leak");
    assert_eq!(
        requests.recv().unwrap(),
        "GET /images/get?names=registry.example%2Fapp%3A1 HTTP/1.1"
    );

    let dir = tempfile::tempdir().unwrap();
    let (socket, _) = fake_engine(
        dir.path(),
        "404 Not Found",
        br#"{"message":"reference does not exist"}"#.to_vec(),
    );
    let mut cmd = common::command();
    cmd.args(["scan", "docker://nope:1"])
        .env("DOCKER_HOST", format!("unix://{}", socket.display()));
    let out = common::run(&mut cmd, &radioactive());
    fails_with(
        &out,
        "cannot save image nope:1: 404 Not Found: reference does not exist",
    );
}

// Errors never echo hostile input: what was wrong and where, never the bytes.

/// Credentials that are not AWS's documentation examples, so every detector would report them.
const HOSTILE_KEY: &str = "AKIAZQ3HOSTILE7INPUT";
const HOSTILE_SECRET: &str = "Zq8vJ3kWm/Px9+Lr2TnYb5HcQe7Ua0FgDs4XoIi1";

/// Runs `scan IMAGE` (generic detectors only) and asserts that it fails with `message` and that
/// stderr holds no 12-byte run of `input` and neither credential.
fn fails_without_echo(image: &Path, message: &str, input: &[u8]) -> String {
    let r = Radioactive::default();
    r.watch(HOSTILE_KEY.as_bytes());
    r.watch(HOSTILE_SECRET.as_bytes());
    let mut cmd = common::command();
    cmd.arg("scan").arg(image);
    let out = common::run(&mut cmd, &r);
    fails_with(&out, message);
    let stderr = out.stderr.clone();
    for window in input.windows(12) {
        assert!(
            !stderr.windows(12).any(|w| w == window),
            "stderr echoes {:?} of the input: {}",
            String::from_utf8_lossy(window),
            String::from_utf8_lossy(&stderr)
        );
    }
    String::from_utf8_lossy(&stderr).into_owned()
}

fn credentials_file() -> Vec<u8> {
    format!(
        "[default]\naws_access_key_id = {HOSTILE_KEY}\naws_secret_access_key = {HOSTILE_SECRET}\n"
    )
    .into_bytes()
}

#[test]
fn a_file_that_is_not_an_archive_is_named_so_without_its_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let what = "not a tar archive, an OCI layout or a docker-save archive";
    // Large enough for a tar header (the tar reader's error quoted it), and smaller than one.
    let mut large = credentials_file();
    while large.len() < 2048 {
        large.extend_from_slice(&credentials_file());
    }
    let small = credentials_file();
    for (name, content) in [("large", large), ("small", small)] {
        let file = dir.path().join(name);
        std::fs::write(&file, &content).unwrap();
        fails_without_echo(&file, what, &content);
    }
}

#[test]
fn a_corrupt_tar_header_is_named_by_member_and_offset_without_its_bytes() {
    let dir = tempfile::tempdir().unwrap();
    // A layer whose second header is overwritten with credentials: a bad checksum, fields
    // that are not numbers.
    let mut tar = layer(vec![
        E::File("etc/ok", b"fine".to_vec()),
        E::File("etc/next", b"next".to_vec()),
    ]);
    let creds = credentials_file();
    tar[1024..1024 + creds.len()].copy_from_slice(&creds);
    let oci = dir.path().join("oci");
    oci_image(&oci, &[(tar.clone(), tar, PLAIN)], &[], json!({}), &[]);
    let stderr = fails_without_echo(&oci, "member 1", &creds);
    assert!(stderr.contains("byte 1024"), "{stderr}");

    // The same archive as the image itself.
    let mut save = std::fs::read({
        let p = dir.path().join("save.tar");
        docker_save(&p, &[layer(vec![E::File("a", b"a".to_vec())])], &[], &[]);
        p
    })
    .unwrap();
    let second = tar::Archive::new(&save[..])
        .entries()
        .unwrap()
        .nth(1)
        .unwrap()
        .unwrap()
        .raw_header_position() as usize;
    save[second..second + creds.len()].copy_from_slice(&creds);
    let file = dir.path().join("corrupt.tar");
    std::fs::write(&file, &save).unwrap();
    let stderr = fails_without_echo(&file, "member 1", &creds);
    assert!(stderr.contains(&format!("byte {second}")), "{stderr}");
}

#[test]
fn hostile_documents_are_refused_without_their_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let layer_tar = layer(vec![E::File("a", b"a".to_vec())]);
    // Each case: an image whose JSON puts a credential where a number, a digest or a path goes.
    let cases: Vec<(&str, Value)> = vec![
        (
            "index: a string for schemaVersion",
            json!({ "schemaVersion": HOSTILE_SECRET, "manifests": [] }),
        ),
        (
            "index: a credential as a digest",
            json!({ "schemaVersion": 2, "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": format!("md5:{HOSTILE_KEY}"), "size": 2 }] }),
        ),
        (
            "index: a credential as a media type and size",
            json!({ "schemaVersion": 2, "manifests": [{
                "mediaType": HOSTILE_SECRET,
                "digest": sha(b"x"), "size": HOSTILE_KEY }] }),
        ),
    ];
    for (name, index) in cases {
        let oci = dir.path().join(name.replace([' ', ':'], "-"));
        let layout = Oci::new(&oci);
        layout.blob(b"x", "application/octet-stream");
        std::fs::write(oci.join("index.json"), index.to_string()).unwrap();
        let stderr = fails_without_echo(&oci, "index.json", index.to_string().as_bytes());
        eprintln!("{name}: {stderr}");
    }

    // docker save: a manifest.json naming files by credentials, a config whose diff_id is one.
    let save_case = |name: &str, manifest: Value, config: Option<String>| {
        let out = dir.path().join(format!("{name}.tar"));
        let mut b = tar::Builder::new(std::fs::File::create(&out).unwrap());
        let mut add = |path: &str, data: &[u8]| {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, path, data).unwrap();
        };
        add("layer0/layer.tar", &layer_tar);
        if let Some(config) = &config {
            add(
                &format!("{}.json", &sha(config.as_bytes())[7..]),
                config.as_bytes(),
            );
        }
        add("manifest.json", manifest.to_string().as_bytes());
        b.finish().unwrap();
        drop(b);
        out
    };
    let missing = save_case(
        "missing",
        json!([{ "Config": format!("{HOSTILE_KEY}.json"), "Layers": [format!("{HOSTILE_SECRET}/layer.tar")] }]),
        None,
    );
    fails_without_echo(&missing, "manifest.json", HOSTILE_KEY.as_bytes());
    let config = config(&[format!("sha256:{HOSTILE_SECRET}")], &[], json!({}), &[]).to_string();
    let config_name = format!("{}.json", &sha(config.as_bytes())[7..]);
    let diff_id = save_case(
        "diff-id",
        json!([{ "Config": config_name, "Layers": ["layer0/layer.tar"] }]),
        Some(config.clone()),
    );
    fails_without_echo(&diff_id, "diff_id", config.as_bytes());
    let climbing = save_case(
        "climbing",
        json!([{ "Config": format!("../{HOSTILE_KEY}.json"), "Layers": [] }]),
        None,
    );
    fails_without_echo(&climbing, "climbs out", HOSTILE_KEY.as_bytes());
}

#[test]
fn a_member_path_climbing_out_is_refused_by_index_without_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let oci = dir.path().join("oci");
    let name = format!("../{HOSTILE_KEY}");
    let tar = layer(vec![
        E::File("ok", b"ok".to_vec()),
        E::Raw(
            raw_header(name.as_bytes(), tar::EntryType::Regular, 4),
            b"evil".to_vec(),
        ),
    ]);
    oci_image(&oci, &[(tar.clone(), tar, PLAIN)], &[], json!({}), &[]);
    let stderr = fails_without_echo(&oci, "member 1 (the header at byte 1024)", name.as_bytes());
    assert!(
        stderr.contains("climbs out of the archive root"),
        "{stderr}"
    );
}

// Builds on a private dockerd (through the helper, which serves the IRSA token and role ARN),
// then scans: what real encoders write is found, and the example's own flow is clean.

/// Runs `scan --format json IMAGE` with the stack's identity, as CI does after a build.
fn scan_built(s: &common::dockerd::Stack, image: &str, extra: &[&str]) -> Output {
    let token_file = s.dir.join("sa/token").display().to_string();
    common::run(
        common::command()
            .args(["scan", "--format", "json", image])
            .args(extra)
            .env("AWS_WEB_IDENTITY_TOKEN_FILE", &token_file)
            .env("AWS_ROLE_ARN", common::ARN)
            .env(
                "DOCKER_HOST",
                format!("unix://{}", s.daemon.socket.display()),
            ),
        &s.r,
    )
}

/// Builds `dockerfile` (after `FROM` the busybox base) through the helper as `tag`; the log.
fn build_through_helper(s: &common::dockerd::Stack, tag: &str, dockerfile: &str) -> String {
    let ctx = s.dir.join(tag);
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {}\n{dockerfile}\n", common::dockerd::BASE_IMAGE),
    )
    .unwrap();
    build_log(
        s,
        common::dockerd::docker_on(&s.helper.socket)
            .args([
                "build",
                "--network=none",
                "--progress=plain",
                "--no-cache",
                "-t",
                tag,
            ])
            .arg(&ctx),
    )
}

/// Runs a `docker build` command; its output, which must hold no served value, and the build
/// must succeed.
fn build_log(s: &common::dockerd::Stack, build: &mut std::process::Command) -> String {
    let out = build.output().unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    s.r.assert_absent("build output", log.as_bytes());
    assert!(out.status.success(), "{build:?}:\n{log}");
    log
}

#[test]
fn real_builds_then_scans() {
    if common::dockerd::skip() {
        return;
    }
    let s = common::dockerd::Stack::start("irsa-scan-");
    wrapped_encodings_written_by_real_tools_are_found(&s);
    the_sccache_example_built_from_a_checkout_scans_clean(&s);
}

/// The flow examples/github-actions/build.yml runs, on examples/sccache/Dockerfile: a build
/// from a checkout of this repository (its tracked files, whose tests hold AWS-shaped keys),
/// through the helper, then `scan docker://IMAGE` with the identity. The stand-in build only
/// checks the sources are there (cargo and S3 are not, offline); the image must be clean.
fn the_sccache_example_built_from_a_checkout_scans_clean(s: &common::dockerd::Stack) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    for name in ["Dockerfile", "Dockerfile.sts"] {
        let text = std::fs::read_to_string(repo.join("examples/sccache").join(name)).unwrap();
        let copies: Vec<_> = text
            .lines()
            .filter(|l| l.starts_with("COPY") || l.starts_with("ADD"))
            .collect();
        assert!(
            copies.is_empty(),
            "{name} copies into the image: {copies:?}"
        );
        assert!(text.contains("--mount=type=bind,target=/src"), "{name}");
    }
    let checkout = s.dir.join("checkout");
    let files = std::process::Command::new("git")
        .arg("-C")
        .arg(repo)
        .arg("ls-files")
        .output()
        .unwrap();
    assert!(files.status.success());
    for file in String::from_utf8(files.stdout).unwrap().lines() {
        let to = checkout.join(file);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(repo.join(file), to).unwrap();
    }
    let log = build_log(
        s,
        common::dockerd::docker_on(&s.helper.socket)
            .args(["build", "--network=none", "--progress=plain", "--no-cache"])
            .arg("-f")
            .arg(repo.join("examples/sccache/Dockerfile"))
            .args([
                "--build-arg",
                &format!("BASE={}", common::dockerd::BASE_IMAGE),
            ])
            .args([
                "--build-arg",
                "BUILD=test -f Cargo.toml && test -f src/lib.rs && echo the sources are mounted",
            ])
            .args(["-t", "sccache-example"])
            .arg(&checkout),
    );
    assert!(log.contains("the sources are mounted"), "{log}");
    assert!(log.contains("aws-web-identity-token is a JWT"), "{log}");
    let out = scan_built(s, "docker://sccache-example", &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The token, written into the image by busybox's encoders (as a careless RUN step would):
/// base64 at 76 columns (LF), at 64 (CRLF), shifted one byte (another alignment and phase),
/// `xxd -p` (60 columns), upper-case hex, `od -An -tx1`.
fn wrapped_encodings_written_by_real_tools_are_found(s: &common::dockerd::Stack) {
    let leaks = [
        ("b64-76", "busybox base64 $T"),
        (
            "b64-64-crlf",
            "busybox base64 -w 0 $T | busybox fold -w 64 | busybox sed 's/$/\\r/'",
        ),
        ("b64-shifted", "{ echo x; cat $T; } | busybox base64"),
        ("xxd", "busybox xxd -p $T"),
        ("xxd-upper", "busybox xxd -p $T | busybox tr a-f A-F"),
        ("od", "busybox od -An -tx1 $T"),
    ];
    let step: Vec<String> = leaks
        .iter()
        .map(|(name, cmd)| format!("{cmd} > /leak-{name}"))
        .collect();
    let log = build_through_helper(
        s,
        "leak-encoded",
        &format!(
            "RUN --mount=type=secret,id=aws-web-identity-token \
             T=/run/secrets/aws-web-identity-token && {} \
             && busybox head -c 66 /leak-b64-64-crlf | busybox tail -c 3 | busybox od -c",
            step.join(" && ")
        ),
    );
    // The 64-column copy really has CRLF line ends (`od -c` of its first line).
    assert!(log.contains("\\r  \\n"), "{log}");
    let out = scan_built(s, "docker://leak-encoded", &[]);
    let f = findings(&out);
    for (name, _) in leaks {
        let form = if name.starts_with("b64") {
            "base64"
        } else {
            "hex"
        };
        let detector = format!("secret aws-web-identity-token ({form}, wrapped)");
        let hit = f
            .iter()
            .find(|f| f["path"] == format!("leak-{name}"))
            .unwrap_or_else(|| panic!("leak-{name} is not found: {f:#?}"));
        assert_eq!(hit["detector"], detector, "{hit}");
    }
}

// AWS's documentation examples are no finding; --ignore accepts known false positives.

const DOC_EXAMPLES: &str = "aws_access_key_id = AKIAIOSFODNN7EXAMPLE\n\
    aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n\
    AWS_ACCESS_KEY_ID=AKIAI44QH8DHBEXAMPLE\n\
    AWS_SECRET_ACCESS_KEY=je7MtGbClwBF/2Zp9Utk/h3yCo8nvbEXAMPLEKEY\n";

/// Runs `scan IMAGE ARGS...` with the generic detectors only; never echoes the hostile key.
fn scan_generic(image: &Path, args: &[&str]) -> Output {
    let r = Radioactive::default();
    r.watch(&HOSTILE_KEY.as_bytes()[4..]);
    let mut cmd = common::command();
    cmd.arg("scan").arg(image).args(args);
    common::run(&mut cmd, &r)
}

#[test]
fn documentation_examples_are_no_findings_and_an_ignore_file_accepts_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let image = |name: &str, prefix: &str| {
        let oci = dir.path().join(name);
        let docs = format!("{prefix}{DOC_EXAMPLES}test_key = {HOSTILE_KEY}\n");
        oci_image(
            &oci,
            &[gz_layer(vec![
                E::File("usr/share/doc/aws/README", docs.into_bytes()),
                E::File("etc/build-id", prefix.as_bytes().to_vec()),
            ])],
            &[],
            json!({}),
            &[],
        );
        oci
    };
    let first = image("first", "");
    let f = findings(&scan_generic(&first, &["--format", "json"]));
    let detectors: Vec<_> = f.iter().map(|f| f["detector"].as_str().unwrap()).collect();
    assert_eq!(
        detectors,
        ["aws-access-key-id"],
        "only the non-example key: {f:?}"
    );
    let fingerprint = f[0]["fingerprint"].as_str().unwrap().to_string();
    assert_eq!(fingerprint.len(), 16, "{f:?}");

    // Every format carries it; the same finding of another run has the same one.
    let text = String::from_utf8_lossy(&scan_generic(&first, &[]).stdout).into_owned();
    assert!(
        text.contains(&format!("[fingerprint {fingerprint}]")),
        "{text}"
    );
    let sarif = json_report(&scan_generic(&first, &["--format", "sarif"]));
    assert_eq!(
        sarif["runs"][0]["results"][0]["fingerprints"]["irsa-secrets/v1"],
        fingerprint.as_str()
    );

    // Accepted: exit 0, counted. A rebuild with other content (other digests and offsets)
    // keeps the fingerprint, so the file keeps working in CI.
    let ignore = dir.path().join("scan-ignore");
    std::fs::write(
        &ignore,
        format!("# known false positives\n\n{fingerprint}  # a test key in the docs\n"),
    )
    .unwrap();
    let rebuilt = image("rebuilt", "build 2 of the same sources\n");
    for oci in [&first, &rebuilt] {
        let out = scan_generic(
            oci,
            &["--ignore", ignore.to_str().unwrap(), "--format", "json"],
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let report = json_report(&out);
        assert_eq!(report["ignored"], 1, "{report}");
        assert_eq!(report["findings"], json!([]), "{report}");
    }
    let out = scan_generic(&first, &["--ignore", ignore.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("no secrets found (1 more ignored by --ignore)"),
        "{text}"
    );

    // A fingerprint that matches nothing is noted; a malformed line is an error naming the
    // line, not showing it.
    std::fs::write(&ignore, format!("{fingerprint}\n0000000000000000\n")).unwrap();
    let out = scan_generic(
        &first,
        &["--ignore", ignore.to_str().unwrap(), "--format", "json"],
    );
    let notes = json_report(&out)["notes"].to_string();
    assert!(notes.contains("1 fingerprint(s) in"), "{notes}");
    std::fs::write(
        &ignore,
        format!("{fingerprint}\naws_access_key_id = {HOSTILE_KEY}\n"),
    )
    .unwrap();
    let out = scan_generic(&first, &["--ignore", ignore.to_str().unwrap()]);
    fails_with(&out, "scan-ignore, line 2: not a finding fingerprint");
}

#[test]
fn a_served_value_is_a_finding_even_when_it_is_a_documentation_example() {
    let dir = tempfile::tempdir().unwrap();
    let oci = dir.path().join("oci");
    oci_image(
        &oci,
        &[gz_layer(vec![E::File(
            "etc/creds",
            DOC_EXAMPLES.as_bytes().to_vec(),
        )])],
        &[],
        json!({}),
        &[],
    );
    let mut cmd = common::command();
    cmd.args(["scan", "--format", "json"])
        .arg(&oci)
        .args(["--secret", "id=docs-key,env=DOCS_KEY"])
        .env("DOCS_KEY", "AKIAIOSFODNN7EXAMPLE");
    let f = findings(&common::run(&mut cmd, &Radioactive::default()));
    let detectors: Vec<_> = f.iter().map(|f| f["detector"].as_str().unwrap()).collect();
    assert_eq!(detectors, ["secret docs-key"], "{f:?}");
}

// The generic detectors in base64 and hex runs: what someone encoded is found, placed at its
// encoded form and named with the encoding, and never shown.

/// `text` with a line break after every `width` bytes, as `base64` and `xxd -p` write it.
fn wrap(text: &str, width: usize, eol: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for line in text.as_bytes().chunks(width) {
        out.extend_from_slice(line);
        out.extend_from_slice(eol.as_bytes());
    }
    out
}

/// Scans an OCI layout of one layer of `files` with the generic detectors only, checking that
/// the output holds neither credential nor any 16 bytes of an encoded file; returns the
/// process output.
fn scan_encoded(dir: &Path, files: Vec<(&str, Vec<u8>)>) -> Output {
    let r = Radioactive::default();
    r.watch(&HOSTILE_KEY.as_bytes()[4..]);
    r.watch(HOSTILE_SECRET.as_bytes());
    for (_, data) in &files {
        for piece in data.chunks(16) {
            r.watch(piece);
        }
    }
    let oci = dir.join("oci");
    let entries = files.into_iter().map(|(p, d)| E::File(p, d)).collect();
    oci_image(&oci, &[gz_layer(entries)], &[], json!({}), &[]);
    let mut cmd = common::command();
    cmd.args(["scan", "--format", "json"]).arg(&oci);
    common::run(&mut cmd, &r)
}

/// A finding's path, detector and offset.
fn at(path: &str, detector: &str, offset: u64) -> (String, String, u64) {
    (path.to_string(), detector.to_string(), offset)
}

/// Each finding's path, detector and offset.
fn placed(f: &[Value]) -> Vec<(String, String, u64)> {
    f.iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_string(),
                f["detector"].as_str().unwrap().to_string(),
                f["offset"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn base64_of_a_credentials_file_in_a_layer_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(credentials_file());
    let f = findings(&scan_encoded(
        dir.path(),
        vec![("root/creds.b64", format!("{b64}\n").into_bytes())],
    ));
    let plain = String::from_utf8(credentials_file()).unwrap();
    let pos = |value: &str| 4 * plain.find(value).unwrap() as u64 / 3;
    assert_eq!(
        placed(&f),
        [
            at(
                "root/creds.b64",
                "aws-access-key-id (base64)",
                pos(HOSTILE_KEY)
            ),
            at(
                "root/creds.b64",
                "aws-secret-access-key (base64)",
                pos(HOSTILE_SECRET)
            ),
        ]
    );
    assert_eq!(f[0]["snippet"], "AKIA…[redacted 16 bytes]", "{f:?}");
}

#[test]
fn base64_of_a_credentials_file_wrapped_at_76_with_crlf_is_found() {
    let dir = tempfile::tempdir().unwrap();
    // `base64` wraps at 76 columns; a Windows checkout makes the line ends CRLF. A header
    // line puts the secret key across a line break.
    let plain = format!(
        "# written by the provisioning job\n{}",
        String::from_utf8(credentials_file()).unwrap()
    );
    let b64 = base64::engine::general_purpose::STANDARD.encode(&plain);
    let f = findings(&scan_encoded(
        dir.path(),
        vec![("opt/app/creds.txt", wrap(&b64, 76, "\r\n"))],
    ));
    let detectors: Vec<_> = f.iter().map(|f| f["detector"].as_str().unwrap()).collect();
    assert_eq!(
        detectors,
        [
            "aws-access-key-id (base64)",
            "aws-secret-access-key (base64, wrapped)"
        ],
        "{f:?}"
    );
}

#[test]
fn a_kubernetes_secret_s_data_section_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let b64 = |v: &str| base64::engine::general_purpose::STANDARD.encode(v);
    let yaml = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: ci-aws\ntype: Opaque\ndata:\n  \
         AWS_ACCESS_KEY_ID: {}\n  AWS_SECRET_ACCESS_KEY: {}\n  AWS_REGION: {}\n",
        b64(HOSTILE_KEY),
        b64(HOSTILE_SECRET),
        b64("eu-west-1")
    );
    let f = findings(&scan_encoded(
        dir.path(),
        vec![("deploy/secret.yaml", yaml.clone().into_bytes())],
    ));
    let pos = |value: &str| yaml.find(&b64(value)).unwrap() as u64;
    assert_eq!(
        placed(&f),
        [
            at(
                "deploy/secret.yaml",
                "aws-access-key-id (base64)",
                pos(HOSTILE_KEY)
            ),
            at(
                "deploy/secret.yaml",
                "aws-secret-access-key (base64)",
                pos(HOSTILE_SECRET)
            ),
        ]
    );
}

#[test]
fn hex_of_an_access_key_pair_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let pair = format!("AWS_ACCESS_KEY_ID={HOSTILE_KEY}\nAWS_SECRET_ACCESS_KEY={HOSTILE_SECRET}\n");
    // As `xxd -p` writes it (60 digits a line), and upper case on one line.
    let f = findings(&scan_encoded(
        dir.path(),
        vec![
            ("tmp/pair.hex", wrap(&hex::encode(&pair), 60, "\n")),
            ("tmp/pair.HEX", hex::encode_upper(&pair).into_bytes()),
        ],
    ));
    let pos = |value: &str| 2 * pair.find(value).unwrap() as u64;
    let key_at = pos(HOSTILE_KEY);
    let secret_at = pos(HOSTILE_SECRET);
    let wrapped = |at: u64| at + at / 60;
    assert_eq!(
        placed(&f),
        [
            at(
                "tmp/pair.hex",
                "aws-access-key-id (hex, wrapped)",
                wrapped(key_at)
            ),
            at(
                "tmp/pair.hex",
                "aws-secret-access-key (hex, wrapped)",
                wrapped(secret_at)
            ),
            at("tmp/pair.HEX", "aws-access-key-id (hex)", key_at),
            at("tmp/pair.HEX", "aws-secret-access-key (hex)", secret_at),
        ]
    );
}

#[test]
fn encoded_credentials_crossing_a_read_boundary_are_found_once() {
    let dir = tempfile::tempdir().unwrap();
    // The scanner reads about 1 MiB at a time: one base64 text longer than that (as `base64`
    // writes it) with a credentials file every 700 bytes of input from just before the first
    // boundary to well after it, so some copy straddles it, whatever its exact place.
    let mut plain = noise(((1 << 20) - (32 << 10)) * 3 / 4);
    let mut copies = 0;
    while plain.len() < (((1 << 20) + (32 << 10)) * 3 / 4) {
        plain.extend_from_slice(&credentials_file());
        plain.extend_from_slice(&noise(577));
        copies += 1;
    }
    plain.extend_from_slice(&noise(1 << 20));
    let b64 = base64::engine::general_purpose::STANDARD.encode(&plain);
    let text = wrap(&b64, 76, "\n");
    let f = findings(&scan_encoded(dir.path(), vec![("var/lib/blob.b64", text)]));
    assert_eq!(f.len(), 2 * copies, "{}", f.len());
    let offsets: Vec<u64> = f.iter().map(|f| f["offset"].as_u64().unwrap()).collect();
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{offsets:?}");
    assert!(offsets[0] < 1 << 20 && offsets[offsets.len() - 1] > 1 << 20);
}

#[test]
fn random_base64_and_hex_of_a_credentials_file_s_length_are_clean() {
    let dir = tempfile::tempdir().unwrap();
    let b64 = |v: &[u8]| base64::engine::general_purpose::STANDARD.encode(v);
    let mut files = Vec::new();
    let mut blobs = Vec::new();
    for _ in 0..64 {
        let mut blob = vec![0u8; credentials_file().len()];
        rand::fill(&mut blob[..]);
        blobs.push(blob);
    }
    for (i, blob) in blobs.iter().enumerate() {
        files.push((format!("random/{i}.b64"), b64(blob).into_bytes()));
        files.push((format!("random/{i}.hex"), hex::encode(blob).into_bytes()));
    }
    let files: Vec<(&str, Vec<u8>)> = files.iter().map(|(p, d)| (p.as_str(), d.clone())).collect();
    let clean = scan_encoded(&dir.path().join("clean"), files.clone());
    assert_eq!(
        clean.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&clean.stdout)
    );
    // The same blobs with a credentials file after each are found, each of them.
    let mut leaky = files;
    for (i, blob) in blobs.iter().enumerate() {
        leaky[2 * i].1 = b64(&[&blob[..], &credentials_file()].concat()).into_bytes();
    }
    let f = findings(&scan_encoded(&dir.path().join("leaky"), leaky));
    assert_eq!(f.len(), 2 * blobs.len(), "{f:?}");
}
