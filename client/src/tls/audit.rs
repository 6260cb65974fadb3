//! The local checks of a TLS directory, made in one place: `lrpymrpc tls check` prints
//! every finding, and a job makes the same checks before it connects (a problem stops
//! it with the same words, a warning is shown), so a key that no longer matches its
//! certificate is not blamed on the CA by a handshake error.

use std::os::unix::fs::PermissionsExt;
use std::time::{SystemTime, UNIX_EPOCH};

use lrpymrpc_certs::inspect::Summary;

use crate::exit::ClientError;
use crate::tls::ClientTls;

/// A certificate warns in the last fortnight of its life, or in its last tenth when
/// that is shorter (a 30-day certificate warns for its last 3 days, not from day one).
const EXPIRY_WARNING_DAYS: i64 = 14;

/// How a finding bears on using the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Ok,
    /// Usable, but worth fixing.
    Warning,
    /// Not usable: a job would fail.
    Problem,
}

/// One thing a check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub level: Level,
    pub text: String,
    pub hint: Option<String>,
    /// Whether a job makes this check too. Which CA signed the client certificate is
    /// `tls check`'s question only: a server may trust another CA for clients than
    /// the one in ca.crt, and its handshake answers that for a job.
    pub for_jobs: bool,
}

impl Finding {
    fn ok(text: String) -> Finding {
        Finding { level: Level::Ok, text, hint: None, for_jobs: true }
    }

    fn warning(text: String, hint: Option<&str>) -> Finding {
        Finding { level: Level::Warning, text, hint: hint.map(str::to_string), for_jobs: true }
    }

    fn problem(text: String, hint: Option<&str>) -> Finding {
        Finding { level: Level::Problem, text, hint: hint.map(str::to_string), for_jobs: true }
    }

    fn only_for_tls_check(self) -> Finding {
        Finding { for_jobs: false, ..self }
    }
}

/// Every local finding about the files, in the order a reader wants them.
pub fn audit(tls: &ClientTls) -> Vec<Finding> {
    let (cert_path, key_path, ca_path) = (&tls.files.cert, &tls.files.key, &tls.files.ca);
    let mut findings = Vec::new();
    let cert = match Summary::from_pem(&tls.cert_pem) {
        Ok(cert) => cert,
        Err(error) => return vec![Finding::problem(format!("`{}`: {error}", cert_path.display()), None)],
    };
    let bundle = match Summary::all_from_pem(&tls.ca_pem) {
        Ok(bundle) => bundle,
        Err(error) => return vec![Finding::problem(format!("`{}`: {error}", ca_path.display()), None)],
    };
    let who = cert.cn.clone().unwrap_or_else(|| "(no CN)".into());
    findings.push(match cert.matches_key(&tls.key_pem) {
        Ok(true) => Finding::ok(format!("`{}` (CN={who}) belongs to `{}`", cert_path.display(), key_path.display())),
        Ok(false) => Finding::problem(
            format!("`{}` does not belong to the key `{}`", cert_path.display(), key_path.display()),
            Some(
                "the certificate was issued for another key: was the key made again after the CSR was signed? \
                 send a new CSR (`lrpymrpc tls init --force --cn NAME`)",
            ),
        ),
        Err(error) => Finding::problem(format!("`{}`: {error}", key_path.display()), None),
    });
    findings.extend(key_permissions(tls));
    findings.push(signer(&cert, &bundle, tls).only_for_tls_check());
    findings.extend(bundle_validity(&bundle, tls));
    findings.push(validity(&cert, &cert_path.display().to_string()));
    findings.push(match cert.client_auth && !cert.is_ca {
        true => Finding::ok("meant for client authentication".into()),
        false => Finding::problem(
            format!("`{}` is not meant for client authentication", cert_path.display()),
            Some("it may be a server or CA certificate; the administrator signs client certificates with `ca sign`"),
        ),
    });
    findings
}

/// The first problem as the error a job stops with, else the warnings it shows.
pub fn for_job(tls: &ClientTls) -> Result<Vec<Finding>, ClientError> {
    let findings: Vec<Finding> = audit(tls).into_iter().filter(|finding| finding.for_jobs).collect();
    if let Some(problem) = findings.iter().find(|f| f.level == Level::Problem) {
        let hint = problem.hint.clone().map(|hint| format!("{hint}; `lrpymrpc tls check` checks every file"));
        return Err(ClientError::Local { message: problem.text.clone(), hint });
    }
    Ok(findings.into_iter().filter(|f| f.level == Level::Warning).collect())
}

/// A key others can read is a warning (ssh refuses such keys; we say it).
fn key_permissions(tls: &ClientTls) -> Option<Finding> {
    let mode = std::fs::metadata(&tls.files.key).ok()?.permissions().mode();
    (mode & 0o077 != 0).then(|| {
        let key = tls.files.key.display();
        Finding::warning(
            format!("the private key `{key}` can be read by other users (mode {:o})", mode & 0o777),
            Some(&format!("chmod 600 {key}")),
        )
    })
}

/// Which certificate of the CA bundle signed the client certificate.
fn signer(cert: &Summary, bundle: &[Summary], tls: &ClientTls) -> Finding {
    let ca_path = tls.files.ca.display();
    let names = |ca: &Summary| ca.cn.clone().unwrap_or_else(|| "?".into());
    match bundle.iter().position(|ca| cert.signed_by(ca)) {
        Some(index) if bundle.len() > 1 => Finding::ok(format!(
            "it is signed by certificate {} of {} in `{ca_path}` (CN={})",
            index + 1,
            bundle.len(),
            names(&bundle[index])
        )),
        Some(index) => Finding::ok(format!("it is signed by the CA in `{ca_path}` (CN={})", names(&bundle[index]))),
        None => Finding::problem(
            format!(
                "`{}` is not signed by the CA in `{ca_path}` (CN={})",
                tls.files.cert.display(),
                bundle.iter().map(names).collect::<Vec<_>>().join(", CN=")
            ),
            Some("put the CA certificate of the server that signed your certificate at that path"),
        ),
    }
}

/// Each CA certificate of a bundle must be a CA and in date: an expired one is a
/// warning while another is usable, a problem when none is.
fn bundle_validity(bundle: &[Summary], tls: &ClientTls) -> Vec<Finding> {
    let ca_path = tls.files.ca.display();
    let now = now();
    let label = |index: usize, ca: &Summary| {
        let cn = ca.cn.as_deref().unwrap_or("?");
        match bundle.len() {
            1 => format!("the CA certificate in `{ca_path}` (CN={cn})"),
            count => format!("certificate {} of {count} in `{ca_path}` (CN={cn})", index + 1),
        }
    };
    let usable = bundle.iter().filter(|ca| ca.is_ca && ca.not_before <= now && now <= ca.not_after).count();
    let mut findings = Vec::new();
    for (index, ca) in bundle.iter().enumerate() {
        let what = label(index, ca);
        let finding = if !ca.is_ca {
            Some(format!("{what} is not a CA certificate: it cannot vouch for a server"))
        } else if now > ca.not_after {
            Some(format!("{what} expired on {}: servers it signed are refused", date(ca.not_after)))
        } else if now < ca.not_before {
            Some(format!("{what} is not valid yet (from {})", date(ca.not_before)))
        } else {
            None
        };
        let hint = Some("ask the server's administrator for the current ca.crt");
        findings.extend(finding.map(|text| match usable {
            0 => Finding::problem(text, hint),
            _ => Finding::warning(text, hint),
        }));
    }
    findings
}

fn validity(cert: &Summary, cert_path: &str) -> Finding {
    validity_at(cert, cert_path, now())
}

/// [`validity`] at the time `now` (Unix seconds).
fn validity_at(cert: &Summary, cert_path: &str, now: i64) -> Finding {
    let days_left = (cert.not_after - now) / 86_400;
    let warn_within = (EXPIRY_WARNING_DAYS * 86_400).min((cert.not_after - cert.not_before) / 10);
    if now < cert.not_before {
        Finding::problem(
            format!("`{cert_path}` is not valid yet (from {})", date(cert.not_before)),
            Some("check this machine's clock"),
        )
    } else if now > cert.not_after {
        Finding::problem(
            format!("`{cert_path}` expired on {}", date(cert.not_after)),
            Some("send a new CSR (`lrpymrpc tls init --force --cn NAME`) to the server's administrator"),
        )
    } else if cert.not_after - now < warn_within {
        Finding::warning(
            format!("`{cert_path}` expires in {days_left} days, on {}", date(cert.not_after)),
            Some("send a new CSR (`lrpymrpc tls init --force --cn NAME`) to the server's administrator soon"),
        )
    } else {
        Finding::ok(format!("valid until {}", date(cert.not_after)))
    }
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// `2026-11-25` for Unix seconds (UTC).
fn date(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix).map_or_else(|_| format!("@{unix}"), |t| t.date().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_warns_in_its_last_fortnight_or_tenth_whichever_is_shorter() {
        const DAY: i64 = 86_400;
        let lasting = |days: i64| {
            let mut cert = Summary::default();
            cert.not_after = days * DAY;
            cert
        };
        let warns = |cert: &Summary, day: i64| validity_at(cert, "c.crt", day * DAY).level == Level::Warning;
        let month = lasting(30);
        assert!(!warns(&month, 0) && !warns(&month, 26), "a 30-day certificate is quiet until its last tenth");
        assert!(warns(&month, 28));
        let year = lasting(365);
        assert!(!warns(&year, 340) && warns(&year, 352), "a year's certificate warns in its last fortnight");
    }

    #[test]
    fn dates_are_utc_days() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(1_795_564_800), "2026-11-25");
    }
}
