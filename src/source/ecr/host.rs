//! Which registry hosts are ECR, and which account, region and partition each names: the pure
//! part of registry credentials, so the rules can be tested without a network.
//!
//! BuildKit asks for credentials by the host it dials, port included (`127.0.0.1:5000`), so an
//! alias maps that exact string; ECR's own names never carry a port.

use std::collections::BTreeMap;
use std::fmt;

/// The host of ECR Public, whose API lives in us-east-1 whatever region pulls from it.
pub const PUBLIC_HOST: &str = "public.ecr.aws";

/// An ECR registry, as named by the host a build pulls from or pushes to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Registry {
    /// A private registry: `ACCOUNT.dkr.ecr[-fips].REGION.amazonaws.com[.cn]`.
    Private {
        /// The 12-digit account id.
        account: String,
        /// The region, e.g. `eu-west-1`.
        region: String,
        /// `aws` or `aws-cn`.
        partition: &'static str,
        /// The FIPS endpoint (`dkr.ecr-fips`), whose API is `ecr-fips` too.
        fips: bool,
    },
    /// ECR Public (`public.ecr.aws`).
    Public,
}

impl fmt::Display for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Registry::Private {
                account,
                region,
                partition,
                fips,
            } => {
                let ecr = if *fips { "ecr-fips" } else { "ecr" };
                let suffix = if *partition == "aws-cn" {
                    "amazonaws.com.cn"
                } else {
                    "amazonaws.com"
                };
                write!(f, "{account}.dkr.{ecr}.{region}.{suffix}")
            }
            Registry::Public => f.write_str(PUBLIC_HOST),
        }
    }
}

impl Registry {
    /// The registries that share this one's passwords: one token opens every registry the
    /// principal may use behind one API endpoint (region, partition, FIPS or not), which is why
    /// ECR deprecated `registryIds`. Keying passwords by account instead would let a build that
    /// names many accounts make one ECR call each, against the account's API quota.
    pub fn password_scope(&self) -> Registry {
        match self {
            Registry::Private {
                region,
                partition,
                fips,
                ..
            } => Registry::Private {
                account: String::new(),
                region: region.clone(),
                partition,
                fips: *fips,
            },
            Registry::Public => Registry::Public,
        }
    }
}

/// Longest DNS name, in bytes (RFC 1035): a longer host names no ECR registry, and is left to
/// the build client without a copy, a log line or an ECR call.
const MAX_HOST: usize = 253;

/// The registry an ECR host names, if it is one. Case does not matter (DNS names do not).
pub fn parse(host: &str) -> Option<Registry> {
    if host.len() > MAX_HOST {
        return None;
    }
    let host = host.to_ascii_lowercase();
    if host == PUBLIC_HOST {
        return Some(Registry::Public);
    }
    let (rest, partition) = if let Some(rest) = host.strip_suffix(".amazonaws.com.cn") {
        (rest, "aws-cn")
    } else {
        (host.strip_suffix(".amazonaws.com")?, "aws")
    };
    let mut labels = rest.split('.');
    let (account, dkr, ecr, region) = (
        labels.next()?,
        labels.next()?,
        labels.next()?,
        labels.next()?,
    );
    if labels.next().is_some() || dkr != "dkr" {
        return None;
    }
    let fips = match ecr {
        "ecr" => false,
        "ecr-fips" => true,
        _ => return None,
    };
    let account_ok = account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit());
    let region_ok = !region.is_empty()
        && region.contains('-')
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    (account_ok && region_ok).then(|| Registry::Private {
        account: account.to_string(),
        region: region.to_string(),
        partition,
        fips,
    })
}

/// Why an `--ecr-alias` is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AliasError {
    /// Not `HOST=TARGET`.
    #[error("--ecr-alias {0:?}: write HOST=ACCOUNT.dkr.ecr.REGION.amazonaws.com")]
    Shape(String),
    /// The target is not an ECR host.
    #[error(
        "--ecr-alias {alias:?}: {target:?} is not an ECR registry \
         (ACCOUNT.dkr.ecr.REGION.amazonaws.com, .amazonaws.com.cn, dkr.ecr-fips or public.ecr.aws)"
    )]
    Target {
        /// The whole alias.
        alias: String,
        /// Its target.
        target: String,
    },
}

/// The ECR hosts of one listener: ECR's own names and the aliases it was given (pull-through
/// cache names, VPC endpoint names, mirrors, a test registry on loopback).
#[derive(Debug, Clone, Default)]
pub struct Hosts {
    aliases: BTreeMap<String, Registry>,
}

impl Hosts {
    /// Parses `HOST=TARGET` aliases; a later alias of the same host replaces an earlier one.
    pub fn new<S: AsRef<str>>(aliases: &[S]) -> Result<Self, AliasError> {
        let mut map = BTreeMap::new();
        for alias in aliases {
            let alias = alias.as_ref();
            let Some((host, target)) = alias.split_once('=') else {
                return Err(AliasError::Shape(alias.to_string()));
            };
            let (host, target) = (host.trim(), target.trim());
            if host.is_empty() || host.contains(['/', ' ']) {
                return Err(AliasError::Shape(alias.to_string()));
            }
            let registry = parse(target).ok_or_else(|| AliasError::Target {
                alias: alias.to_string(),
                target: target.to_string(),
            })?;
            map.insert(host.to_ascii_lowercase(), registry);
        }
        Ok(Self { aliases: map })
    }

    /// The ECR registry behind `host`: an alias first (so an alias may also redirect an ECR
    /// name), then ECR's own names.
    pub fn registry(&self, host: &str) -> Option<Registry> {
        self.aliases
            .get(&host.to_ascii_lowercase())
            .cloned()
            .or_else(|| parse(host))
    }

    /// The aliased hosts, for the start-up log.
    pub fn aliases(&self) -> impl Iterator<Item = (&str, &Registry)> {
        self.aliases.iter().map(|(h, r)| (h.as_str(), r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn private(account: &str, region: &str, partition: &'static str, fips: bool) -> Registry {
        Registry::Private {
            account: account.into(),
            region: region.into(),
            partition,
            fips,
        }
    }

    #[test]
    fn ecr_names_give_account_region_and_partition() {
        assert_eq!(
            parse("123456789012.dkr.ecr.eu-west-1.amazonaws.com"),
            Some(private("123456789012", "eu-west-1", "aws", false))
        );
        assert_eq!(
            parse("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn"),
            Some(private("123456789012", "cn-north-1", "aws-cn", false))
        );
        assert_eq!(
            parse("123456789012.DKR.ecr-fips.us-gov-west-1.amazonaws.com"),
            Some(private("123456789012", "us-gov-west-1", "aws", true))
        );
        assert_eq!(parse("public.ecr.aws"), Some(Registry::Public));
    }

    #[test]
    fn other_hosts_are_not_ecr() {
        for host in [
            "registry-1.docker.io",
            "ghcr.io",
            "12345678901.dkr.ecr.eu-west-1.amazonaws.com",
            "1234567890123.dkr.ecr.eu-west-1.amazonaws.com",
            "12345678901a.dkr.ecr.eu-west-1.amazonaws.com",
            "123456789012.dkr.ecr.eu-west-1.amazonaws.com:443",
            "123456789012.dkr.ecr.eu-west-1.amazonaws.com.evil.example",
            "evil.123456789012.dkr.ecr.eu-west-1.amazonaws.com",
            "123456789012.dkr.ecr.amazonaws.com",
            "123456789012.dkr.ecr.Eu_West.amazonaws.com",
            "123456789012.api.ecr.eu-west-1.amazonaws.com",
            "public.ecr.aws.example",
            "",
        ] {
            assert_eq!(parse(host), None, "{host}");
        }
    }

    #[test]
    fn the_registry_prints_as_its_host() {
        for host in [
            "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
            "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn",
            "123456789012.dkr.ecr-fips.us-east-1.amazonaws.com",
            "public.ecr.aws",
        ] {
            assert_eq!(parse(host).unwrap().to_string(), host);
        }
    }

    #[test]
    fn an_alias_with_a_port_maps_that_exact_host() {
        let hosts = Hosts::new(&[
            "127.0.0.1:5000=123456789012.dkr.ecr.us-east-1.amazonaws.com",
            "Mirror.Example=public.ecr.aws",
        ])
        .unwrap();
        assert_eq!(
            hosts.registry("127.0.0.1:5000"),
            Some(private("123456789012", "us-east-1", "aws", false))
        );
        assert_eq!(hosts.registry("127.0.0.1:5001"), None);
        assert_eq!(hosts.registry("127.0.0.1"), None);
        assert_eq!(hosts.registry("mirror.example"), Some(Registry::Public));
        assert_eq!(
            hosts.registry("210987654321.dkr.ecr.eu-west-1.amazonaws.com"),
            Some(private("210987654321", "eu-west-1", "aws", false))
        );
    }

    #[test]
    fn a_later_alias_replaces_an_earlier_one() {
        let hosts = Hosts::new(&[
            "r.example=123456789012.dkr.ecr.us-east-1.amazonaws.com",
            "r.example=210987654321.dkr.ecr.eu-west-1.amazonaws.com",
        ])
        .unwrap();
        assert_eq!(
            hosts.registry("r.example"),
            Some(private("210987654321", "eu-west-1", "aws", false))
        );
    }

    #[test]
    fn bad_aliases_say_how_to_write_them() {
        let e = Hosts::new(&["r.example"]).unwrap_err();
        assert!(e.to_string().contains("HOST=ACCOUNT.dkr.ecr"), "{e}");
        let e = Hosts::new(&["=123456789012.dkr.ecr.us-east-1.amazonaws.com"]).unwrap_err();
        assert!(matches!(e, AliasError::Shape(_)), "{e}");
        let e = Hosts::new(&["r.example=ghcr.io"]).unwrap_err();
        assert!(e.to_string().contains("is not an ECR registry"), "{e}");
    }
}
