//! IAM ARNs, checked for shape before a typo reaches STS: one parser for the role ARN and the
//! session's policy ARNs.

/// What is wrong with an ARN's shape; the text reads after the ARN ("role ARN \"x\" is not an
/// ARN").
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ArnProblem {
    /// Not six `:`-separated parts starting with `arn`.
    #[error("is not an ARN")]
    NotArn,
    /// The partition is empty or not lowercase letters and dashes.
    #[error("has an invalid partition")]
    Partition,
    /// Another service's ARN, or one with a region.
    #[error("is not an IAM ARN")]
    NotIam,
    /// The account is not 12 digits.
    #[error("does not have a 12-digit account id")]
    Account,
    /// The account is neither 12 digits nor `aws` (managed policies).
    #[error("does not have a 12-digit account id or \"aws\"")]
    AccountOrAws,
    /// The resource is not of this kind (`role`, `policy`).
    #[error("is not a {0}")]
    Kind(&'static str),
    /// The resource's name is empty, too long or has characters IAM refuses.
    #[error("has an invalid {0} name")]
    Name(&'static str),
}

/// An ARN given for a role or a policy that IAM would refuse, with the expected shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArnError {
    /// A role ARN (`--role-arn`, `AWS_ROLE_ARN`).
    #[error(
        "role ARN {arn:?} {problem}; expected arn:<partition>:iam::<12-digit account>:role/<name>, \
         e.g. arn:aws:iam::111122223333:role/ci-builder"
    )]
    Role {
        /// The ARN as given (configuration, not a secret).
        arn: String,
        /// What is wrong with it.
        problem: ArnProblem,
    },
    /// A managed policy ARN (`--policy-arn`).
    #[error(
        "policy ARN {arn:?} {problem}; expected arn:<partition>:iam::<12-digit account or aws>:\
         policy/<name>, e.g. arn:aws:iam::aws:policy/ReadOnlyAccess"
    )]
    Policy {
        /// The ARN as given (configuration, not a secret).
        arn: String,
        /// What is wrong with it.
        problem: ArnProblem,
    },
}

/// Splits `arn:<partition>:iam::<account>:<resource>`, checking the parts every IAM ARN shares;
/// returns the account and the resource, or why the text is not one.
pub fn split_iam(arn: &str) -> Result<(&str, &str), ArnProblem> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let [prefix, partition, service, region, account, resource] = parts[..] else {
        return Err(ArnProblem::NotArn);
    };
    if prefix != "arn" {
        return Err(ArnProblem::NotArn);
    }
    if partition.is_empty()
        || !partition
            .chars()
            .all(|c| c.is_ascii_lowercase() || c == '-')
    {
        return Err(ArnProblem::Partition);
    }
    if service != "iam" || !region.is_empty() {
        return Err(ArnProblem::NotIam);
    }
    Ok((account, resource))
}

/// True for a 12-digit account id.
pub fn is_account_id(account: &str) -> bool {
    account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit())
}

/// Checks `<kind>/<path/><name>` (IAM's name characters, the name at most `max_name` long).
pub fn check_resource(
    resource: &str,
    kind: &'static str,
    max_name: usize,
) -> Result<(), ArnProblem> {
    let Some(path_name) = resource
        .strip_prefix(kind)
        .and_then(|r| r.strip_prefix('/'))
    else {
        return Err(ArnProblem::Kind(kind));
    };
    let name = path_name.rsplit('/').next().unwrap_or_default();
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "+=,.@_-/".contains(c);
    if name.is_empty() || name.len() > max_name || !path_name.chars().all(ok_char) {
        return Err(ArnProblem::Name(kind));
    }
    Ok(())
}

/// The service and region of any ARN (`arn:<partition>:<service>:<region>:<account>:<resource>`),
/// for the Secrets Manager and SSM ARNs a `--secret name=` may give: the call goes to the
/// region the ARN names. `None` when the text is not an ARN or names no region.
pub fn service_region(arn: &str) -> Option<(&str, &str)> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let [prefix, partition, service, region, _account, resource] = parts[..] else {
        return None;
    };
    (prefix == "arn"
        && !partition.is_empty()
        && !service.is_empty()
        && !region.is_empty()
        && !resource.is_empty())
    .then_some((service, region))
}
