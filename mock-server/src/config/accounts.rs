//! System accounts by name or number, for the two places the server meets file
//! ownership: `ca init --owner USER` gives the server key to the service's user, and a
//! key the server cannot read is said with its owner and the user the server runs as.

use std::ffi::{CStr, CString};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// A user of this system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// The account named `user` (a login name, or a number).
pub fn lookup(user: &str) -> Result<Account, String> {
    if let Ok(uid) = user.parse::<u32>() {
        return Ok(by_uid(uid).unwrap_or(Account { name: uid.to_string(), uid, gid: uid }));
    }
    let name = CString::new(user).map_err(|_| format!("`{user}` is not a user name"))?;
    passwd(|entry, buffer, found| {
        // SAFETY: every pointer is valid for the call; the buffer's length is passed.
        unsafe { libc::getpwnam_r(name.as_ptr(), entry, buffer.as_mut_ptr(), buffer.len(), found) }
    })
    .ok_or_else(|| format!("there is no user `{user}` on this system"))
}

/// The account with this uid, when it has an entry.
pub fn by_uid(uid: u32) -> Option<Account> {
    passwd(|entry, buffer, found| {
        // SAFETY: every pointer is valid for the call; the buffer's length is passed.
        unsafe { libc::getpwuid_r(uid, entry, buffer.as_mut_ptr(), buffer.len(), found) }
    })
}

/// A uid in words: the user's name, else the number.
pub fn name_of(uid: u32) -> String {
    by_uid(uid).map_or_else(|| format!("uid {uid}"), |account| account.name)
}

/// The user this process runs as.
pub fn current_uid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// Why the server cannot read `path` although it exists, in words naming both users:
/// "it is owned by `root` with mode 0600, and the server runs as `nobody`".
pub fn why_unreadable(path: &Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    Some(format!(
        "it is owned by `{}` with mode {:04o}, and the server runs as `{}`",
        name_of(meta.uid()),
        meta.mode() & 0o7777,
        name_of(current_uid())
    ))
}

fn passwd(
    call: impl Fn(*mut libc::passwd, &mut Vec<libc::c_char>, *mut *mut libc::passwd) -> libc::c_int,
) -> Option<Account> {
    let mut buffer: Vec<libc::c_char> = vec![0; 4096];
    loop {
        // SAFETY: passwd is plain data; an all-zero value is a valid place to write into.
        let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        match call(&mut entry, &mut buffer, &mut found) {
            libc::ERANGE if buffer.len() < 1 << 20 => buffer.resize(buffer.len() * 2, 0),
            0 if !found.is_null() => {
                // SAFETY: on success pw_name points at a NUL-terminated string in `buffer`.
                let name = unsafe { CStr::from_ptr(entry.pw_name) }.to_string_lossy().into_owned();
                return Some(Account { name, uid: entry.pw_uid, gid: entry.pw_gid });
            }
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_found_by_name_and_number() {
        let root = lookup("root").unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert_eq!(lookup("0").unwrap().name, "root");
        assert!(lookup("no-such-user-here").unwrap_err().contains("no user `no-such-user-here`"));
        assert_eq!(name_of(0), "root");
    }
}
