//! `--root-password` and `--password USER:SELECTOR`: SHA-crypt hashes in /etc/shadow.
//!
//! The hash is RustCrypto's `sha-crypt` (the `$6$`/`$5$` algorithms of glibc's crypt, with
//! the default 5000 rounds written implicitly as glibc and `openssl passwd -6` write them),
//! with a 16-character salt from the OS's random source. Only the password field of the
//! user's line changes; the other fields (ageing included) stay as they were, as
//! virt-customize leaves them.

use std::path::PathBuf;
use std::str::FromStr;

use sha_crypt::{Algorithm, CustomizedPasswordHasher, Params, ShaCrypt};
use vdisk_block::{Error, Result};

use super::ops::Crypto;

/// How a password is chosen (virt-customize's selectors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// `password:PASSWORD`.
    Password(String),
    /// `file:FILENAME`: the first line of a host file.
    File(PathBuf),
    /// `random`: a random password, printed.
    Random,
    /// `disabled`: no password logs in (`*`).
    Disabled,
    /// `locked:SELECTOR`: the account locked (`!` before the hash), the password set as the
    /// inner selector says, for when it is unlocked.
    Locked(Box<Selector>),
}

impl FromStr for Selector {
    type Err = Error;
    fn from_str(s: &str) -> Result<Selector> {
        if let Some(p) = s.strip_prefix("password:") {
            return Ok(Selector::Password(p.to_string()));
        }
        if let Some(f) = s.strip_prefix("file:") {
            return Ok(Selector::File(PathBuf::from(f)));
        }
        if let Some(inner) = s.strip_prefix("locked:") {
            let inner: Selector = inner.parse()?;
            if matches!(inner, Selector::Locked(_)) {
                return Err(Error::invalid(format!("'{s}': locked:locked:..")));
            }
            return Ok(Selector::Locked(Box::new(inner)));
        }
        match s {
            "random" => Ok(Selector::Random),
            "disabled" => Ok(Selector::Disabled),
            _ => Err(Error::invalid(format!(
                "password selector '{s}': expected password:PASSWORD, file:FILENAME, random, \
                 disabled or locked:SELECTOR"
            ))),
        }
    }
}

/// Checks a user name as shadow-utils allows it (no ':' or newline, not empty, at most 256
/// bytes).
pub fn check_user(u: &str) -> Result<String> {
    if u.is_empty() || u.len() > 256 || u.contains([':', '\n', '/', '\0']) || u.starts_with('-') {
        return Err(Error::invalid(format!("'{u}': not a valid user name")));
    }
    Ok(u.to_string())
}

fn os_random(buf: &mut [u8]) -> Result<()> {
    getrandom::fill(buf)
        .map_err(|e| Error::io("getrandom", None, std::io::Error::other(e.to_string())))
}

/// `n` random characters from `alphabet` (rejection sampling, so each is equally likely).
pub fn random_string(n: usize, alphabet: &[u8]) -> Result<String> {
    assert!(!alphabet.is_empty() && alphabet.len() <= 256);
    let limit = 256 - 256 % alphabet.len();
    let mut out = String::with_capacity(n);
    let mut buf = [0u8; 64];
    while out.len() < n {
        os_random(&mut buf)?;
        for &b in &buf {
            if usize::from(b) < limit && out.len() < n {
                out.push(char::from(alphabet[usize::from(b) % alphabet.len()]));
            }
        }
    }
    Ok(out)
}

/// A random password for the `random` selector: 16 letters and digits (about 95 bits).
pub fn random_password() -> Result<String> {
    random_string(
        16,
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
    )
}

/// The crypt(3) hash of `password` with a fresh random salt.
pub fn hash(password: &str, crypto: Crypto) -> Result<String> {
    let mut salt = [0u8; 12];
    os_random(&mut salt)?;
    hash_with_salt(password, &salt, crypto)
}

/// The crypt(3) hash of `password` with the salt whose crypt-base64 encoding is the salt
/// string (12 bytes encode to the 16 characters glibc uses at most).
pub fn hash_with_salt(password: &str, salt: &[u8], crypto: Crypto) -> Result<String> {
    let alg = match crypto {
        Crypto::Sha512 => Algorithm::Sha512Crypt,
        Crypto::Sha256 => Algorithm::Sha256Crypt,
    };
    let h = ShaCrypt::new(alg, Params::RECOMMENDED)
        .hash_password_customized(password.as_bytes(), salt, None, None, Params::RECOMMENDED)
        .map_err(|e| Error::invalid(format!("password hash: {e}")))?;
    // The crate writes the default rounds explicitly ("$6$rounds=5000$salt$hash"); glibc
    // reads both spellings the same and writes the implicit one, so we do too.
    let s = h.as_str();
    let implicit = format!("$rounds={}$", Params::RECOMMENDED_ROUNDS);
    Ok(s.replacen(&implicit, "$", 1))
}

/// The shadow password field for `selector`. `read_file` reads a host file's first line
/// (for `file:`); the second value is the random password chosen, to print.
pub fn shadow_field(
    selector: &Selector,
    crypto: Crypto,
    read_file: &dyn Fn(&std::path::Path) -> Result<String>,
) -> Result<(String, Option<String>)> {
    Ok(match selector {
        Selector::Password(p) => (hash(p, crypto)?, None),
        Selector::File(f) => {
            let text = read_file(f)?;
            let line = text.lines().next().unwrap_or_default();
            (hash(line, crypto)?, None)
        }
        Selector::Random => {
            let p = random_password()?;
            (hash(&p, crypto)?, Some(p))
        }
        Selector::Disabled => ("*".to_string(), None),
        Selector::Locked(inner) => {
            let (f, r) = shadow_field(inner, crypto, read_file)?;
            (format!("!{f}"), r)
        }
    })
}

/// Sets `user`'s password field in /etc/shadow text; the user must have a line.
pub fn set_shadow(shadow: &str, user: &str, field: &str) -> Result<String> {
    let mut found = false;
    let mut out = Vec::new();
    for l in super::lines(shadow) {
        let mut parts: Vec<&str> = l.split(':').collect();
        if parts.len() >= 2 && parts[0] == user && !found {
            found = true;
            parts[1] = field;
            out.push(parts.join(":"));
        } else {
            out.push(l.to_string());
        }
    }
    if !found {
        return Err(Error::invalid(format!(
            "/etc/shadow: no user '{user}' (the account must exist in the guest)"
        )));
    }
    Ok(super::join_lines(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        assert_eq!(
            "password:a:b".parse::<Selector>().unwrap(),
            Selector::Password("a:b".into())
        );
        assert_eq!(
            "locked:random".parse::<Selector>().unwrap(),
            Selector::Locked(Box::new(Selector::Random))
        );
        assert!("locked:locked:random".parse::<Selector>().is_err());
        assert!("frob".parse::<Selector>().is_err());
        assert!(check_user("ro:ot").is_err());
    }

    #[test]
    fn shadow_edit() {
        let s = "root:$6$x$y:19000:0:99999:7:::\nbin:*:18000:0:99999:7:::\n";
        assert_eq!(
            set_shadow(s, "bin", "!*").unwrap(),
            "root:$6$x$y:19000:0:99999:7:::\nbin:!*:18000:0:99999:7:::\n"
        );
        assert!(set_shadow(s, "nobody", "*").is_err());
    }

    #[test]
    fn hashes_have_glibc_shape() {
        let h = hash("secret", Crypto::Sha512).unwrap();
        let parts: Vec<&str> = h.split('$').collect();
        assert_eq!(parts.len(), 4, "{h}");
        assert_eq!(parts[1], "6");
        assert_eq!(parts[2].len(), 16);
        assert_eq!(parts[3].len(), 86);
        let h2 = hash("secret", Crypto::Sha512).unwrap();
        assert_ne!(h, h2, "salts differ");
        assert!(hash("x", Crypto::Sha256).unwrap().starts_with("$5$"));
        let r = random_password().unwrap();
        assert_eq!(r.len(), 16);
        assert!(r.bytes().all(|c| c.is_ascii_alphanumeric()));
    }

    /// Differential: openssl's own SHA-crypt gives the same string for the salt we chose.
    /// (openssl cannot take an empty password on its command line.)
    #[test]
    fn hashes_agree_with_openssl() {
        if std::process::Command::new("openssl")
            .arg("version")
            .output()
            .is_err()
        {
            panic!("openssl is needed for this test (.ci/run installs it)");
        }
        for (pw, crypto, flag) in [
            ("s3cret", Crypto::Sha512, "-6"),
            ("pässwörd with spaces", Crypto::Sha512, "-6"),
            ("x", Crypto::Sha256, "-5"),
        ] {
            let h = hash(pw, crypto).unwrap();
            let salt = h.split('$').nth(2).unwrap();
            let out = std::process::Command::new("openssl")
                .args(["passwd", flag, "-salt", salt, pw])
                .output()
                .unwrap();
            assert!(out.status.success());
            assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), h, "{pw:?}");
        }
    }
}
