//! The REPO_URL mapping of an Execute request (`name=url,name=url,`), parsed into
//! requirements once, before anything runs; what may be shared of it is `envs.rs`'s
//! decision.

use crate::error::JobError;

/// One `name=url` item of the REPO_URL mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub name: String,
    pub url: String,
}

/// Parses `name=url,name=url,` (empty items and a trailing comma allowed; an item
/// without `=` is a bare url). A url starting with `-` would be read by pip as an
/// option (`--index-url ...`), so it is refused.
pub fn parse_repo_url(repo_url: &str) -> Result<Vec<Requirement>, JobError> {
    let mut requirements = Vec::new();
    for item in repo_url.split(',').map(str::trim).filter(|item| !item.is_empty()) {
        let (name, url) = match item.split_once('=') {
            Some((name, url)) => (name.trim(), url.trim()),
            None => (item, item),
        };
        let refuse = |reason: &str| JobError::BadRepoUrl { item: item.to_string(), reason: reason.to_string() };
        if url.is_empty() {
            return Err(refuse("the url is empty"));
        }
        if url.starts_with('-') {
            return Err(refuse("a url may not start with `-` (pip would take it as an option)"));
        }
        requirements.push(Requirement { name: name.to_string(), url: url.to_string() });
    }
    Ok(requirements)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_mapping_with_empty_items_and_bare_urls() {
        let parsed = parse_repo_url("numpy=numpy,, charao=git+https://x/y@v1 ,bare,").unwrap();
        let urls: Vec<_> = parsed.iter().map(|r| (r.name.as_str(), r.url.as_str())).collect();
        assert_eq!(urls, [("numpy", "numpy"), ("charao", "git+https://x/y@v1"), ("bare", "bare")]);
        assert!(parse_repo_url("").unwrap().is_empty());
    }

    #[test]
    fn refuses_pip_option_injection() {
        let error = parse_repo_url("x=--index-url=http://evil").unwrap_err();
        assert!(error.to_string().contains("may not start with `-`"), "{error}");
        assert!(parse_repo_url("x=").is_err());
    }
}
