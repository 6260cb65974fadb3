//! The secret link to a job's own status page (`/job/ID/SECRET`), given only to the
//! job's owner (`ListJobs`, `Status`): the secret is an HMAC-SHA256 of the job id
//! under a key derived from the root's spool key, so it needs no storage, stays the
//! same across a restart, cannot be made from the id without the key, and is checked
//! in constant time. A link stops working when its job is gone.

use ring::hmac;

use super::spool_file::SpoolKey;

/// Makes and checks job page secrets.
pub struct JobLinks(hmac::Key);

impl std::fmt::Debug for JobLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobLinks(..)")
    }
}

impl JobLinks {
    pub fn new(spool_key: &SpoolKey) -> JobLinks {
        JobLinks(spool_key.derive(b"lrpymrpc job page links v1"))
    }

    /// The secret of job `id`'s page (64 hex digits).
    pub fn secret(&self, id: &str) -> String {
        lrpymrpc_units::hex(hmac::sign(&self.0, id.as_bytes()).as_ref())
    }

    /// `/job/ID/SECRET`.
    pub fn path(&self, id: &str) -> String {
        format!("/job/{id}/{}", self.secret(id))
    }

    /// Whether `secret` is job `id`'s, compared in constant time.
    pub fn check(&self, id: &str, secret: &str) -> bool {
        let Some(tag) = unhex(secret) else { return false };
        hmac::verify(&self.0, id.as_bytes(), &tag).is_ok()
    }
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_opens_its_own_job_only_and_survives_a_restart() {
        let root = tempfile::tempdir().unwrap();
        let links = JobLinks::new(&SpoolKey::of_root(root.path()).unwrap());
        let secret = links.secret("job-a");
        assert_eq!(secret.len(), 64);
        assert!(links.check("job-a", &secret));
        assert!(!links.check("job-b", &secret), "another job's secret");
        let mut wrong = secret.clone().into_bytes();
        wrong[63] = if wrong[63] == b'0' { b'1' } else { b'0' };
        assert!(!links.check("job-a", std::str::from_utf8(&wrong).unwrap()));
        for bad in ["", "zz", &secret[..62], &format!("{secret}00"), &secret.to_uppercase().replace('A', "G")] {
            assert!(!links.check("job-a", bad), "{bad}");
        }
        let again = JobLinks::new(&SpoolKey::of_root(root.path()).unwrap());
        assert_eq!(again.secret("job-a"), secret, "the same after a restart");
        let other_root = tempfile::tempdir().unwrap();
        assert_ne!(JobLinks::new(&SpoolKey::of_root(other_root.path()).unwrap()).secret("job-a"), secret);
    }
}
