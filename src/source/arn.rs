//! IAM ARNs, checked for shape before a typo reaches STS: one parser for the role ARN and the
//! session's policy ARNs.

/// Splits `arn:<partition>:iam::<account>:<resource>`, checking the parts every IAM ARN shares;
/// returns the account and the resource, or why the text is not one.
pub fn split_iam(arn: &str) -> Result<(&str, &str), &'static str> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let [prefix, partition, service, region, account, resource] = parts[..] else {
        return Err("is not an ARN");
    };
    if prefix != "arn" {
        return Err("is not an ARN");
    }
    if partition.is_empty()
        || !partition
            .chars()
            .all(|c| c.is_ascii_lowercase() || c == '-')
    {
        return Err("has an invalid partition");
    }
    if service != "iam" || !region.is_empty() {
        return Err("is not an IAM ARN");
    }
    Ok((account, resource))
}

/// True for a 12-digit account id.
pub fn is_account_id(account: &str) -> bool {
    account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit())
}

/// Checks `<kind>/<path/><name>` (IAM's name characters, the name at most `max_name` long).
pub fn check_resource(resource: &str, kind: &str, max_name: usize) -> Result<(), String> {
    let Some(path_name) = resource
        .strip_prefix(kind)
        .and_then(|r| r.strip_prefix('/'))
    else {
        return Err(format!("is not a {kind}"));
    };
    let name = path_name.rsplit('/').next().unwrap_or_default();
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "+=,.@_-/".contains(c);
    if name.is_empty() || name.len() > max_name || !path_name.chars().all(ok_char) {
        return Err(format!("has an invalid {kind} name"));
    }
    Ok(())
}
