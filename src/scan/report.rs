//! Prints a scan report for people (`text`), programs (`json`) and code-scanning dashboards
//! (`sarif`, SARIF 2.1.0). Findings only ever carry redacted snippets, so every format is safe
//! to store as a CI artifact.

use std::collections::BTreeMap;

use serde_json::json;

use super::Report;

/// Output formats of `scan`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One line per finding, then a summary.
    Text,
    /// The report as one JSON object.
    Json,
    /// SARIF 2.1.0, for code-scanning tools.
    Sarif,
}

/// Renders `report` in `format`.
pub fn render(report: &Report, format: Format) -> String {
    match format {
        Format::Text => text(report),
        Format::Json => serde_json::to_string_pretty(report).expect("a report serializes") + "\n",
        Format::Sarif => {
            serde_json::to_string_pretty(&sarif(report)).expect("SARIF serializes") + "\n"
        }
    }
}

fn text(report: &Report) -> String {
    let mut out = String::new();
    for f in &report.findings {
        let path = if f.path.is_empty() { "-" } else { &f.path };
        out.push_str(&format!(
            "{} {} {path} ({} at offset {}): {}: {} [fingerprint {}]\n",
            f.blob_kind, f.blob, f.place, f.offset, f.detector, f.snippet, f.fingerprint
        ));
    }
    if report.omitted > 0 {
        out.push_str(&format!(
            "... and {} more, not listed (a report lists the first {})\n",
            report.omitted,
            report.findings.len()
        ));
    }
    for note in &report.notes {
        out.push_str(&format!("note: {note}\n"));
    }
    let mut verdict = match report.findings.len() as u64 + report.omitted {
        0 => "no secrets found".to_string(),
        1 => "1 finding".to_string(),
        n => format!("{n} findings"),
    };
    match report.ignored {
        0 => {}
        1 => verdict.push_str(" (1 more ignored by --ignore)"),
        n => verdict.push_str(&format!(" ({n} more ignored by --ignore)")),
    }
    out.push_str(&format!(
        "{}: {verdict} ({} documents and blobs, {} bytes, all digests verified)\n",
        report.image, report.blobs, report.bytes
    ));
    out
}

fn sarif(report: &Report) -> serde_json::Value {
    let mut rules = BTreeMap::new();
    let results: Vec<_> = report
        .findings
        .iter()
        .map(|f| {
            let rule = rule_id(&f.detector);
            rules.entry(rule.clone()).or_insert_with(|| f.detector.clone());
            let uri = if f.path.is_empty() {
                f.blob.clone()
            } else {
                format!("{}/{}", f.blob, f.path)
            };
            json!({
                "ruleId": rule,
                "level": "error",
                "message": { "text": format!("{} in {} {} ({}): {}", f.detector, f.blob_kind, f.place, f.path, f.snippet) },
                "locations": [{
                    "physicalLocation": {
                        "artifactLocation": { "uri": uri },
                        "region": { "byteOffset": f.offset }
                    }
                }],
                "fingerprints": { "irsa-secrets/v1": f.fingerprint },
                "properties": { "blob": f.blob, "blobKind": f.blob_kind, "place": f.place },
            })
        })
        .collect();
    let rules: Vec<_> = rules
        .into_iter()
        .map(|(id, detector)| {
            json!({ "id": id, "shortDescription": { "text": format!("credential in image: {detector}") } })
        })
        .collect();
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": { "driver": {
                "name": "irsa-secrets scan",
                "version": env!("CARGO_PKG_VERSION"),
                "rules": rules,
            }},
            "artifacts": [{ "location": { "uri": report.image } }],
            "results": results,
            "properties": {
                "notes": report.notes,
                "ignored": report.ignored,
                "omitted": report.omitted,
            },
        }]
    })
}

/// A stable rule id for a detector: `secret/ID`, `aws-access-key-id`, `jwt`...
fn rule_id(detector: &str) -> String {
    let base = detector.split(" (").next().unwrap_or(detector);
    base.replace(' ', "/")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::Finding;

    #[test]
    fn every_format_carries_the_finding() {
        let report = Report {
            image: "img.tar".into(),
            findings: vec![Finding {
                blob: "sha256:ab".into(),
                blob_kind: "layer".into(),
                path: "etc/app.conf".into(),
                place: "content".into(),
                offset: 7,
                detector: "secret aws-role-arn (base64)".into(),
                snippet: "YXJu…[redacted 40 bytes]".into(),
                fingerprint: "0123456789abcdef".into(),
            }],
            ignored: 2,
            omitted: 0,
            notes: vec![],
            blobs: 3,
            bytes: 100,
        };
        let text = render(&report, Format::Text);
        assert!(
            text.contains("layer sha256:ab etc/app.conf (content at offset 7)"),
            "{text}"
        );
        assert!(text.contains("[fingerprint 0123456789abcdef]"), "{text}");
        assert!(
            text.contains("1 finding (2 more ignored by --ignore)"),
            "{text}"
        );
        let json: serde_json::Value = serde_json::from_str(&render(&report, Format::Json)).unwrap();
        assert_eq!(json["findings"][0]["offset"], 7);
        let sarif: serde_json::Value =
            serde_json::from_str(&render(&report, Format::Sarif)).unwrap();
        let result = &sarif["runs"][0]["results"][0];
        assert_eq!(result["ruleId"], "secret/aws-role-arn");
        assert_eq!(
            result["fingerprints"]["irsa-secrets/v1"],
            "0123456789abcdef"
        );
        assert_eq!(
            result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"],
            "sha256:ab/etc/app.conf"
        );
        assert_eq!(
            sarif["runs"][0]["tool"]["driver"]["rules"][0]["id"],
            "secret/aws-role-arn"
        );
    }
}
