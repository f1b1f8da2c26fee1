//! What an HTTP(S) image name is, and how names an image records resolve against it.

/// Whether `name` is an `http://` or `https://` URL (scheme case-insensitive).
pub fn is_http_name(name: &str) -> bool {
    scheme_len(name).is_some()
}

/// The length of the `http://` or `https://` prefix of `name`.
fn scheme_len(name: &str) -> Option<usize> {
    let lower = |n: usize| name.get(..n).map(str::to_ascii_lowercase);
    if lower(7).as_deref() == Some("http://") {
        Some(7)
    } else if lower(8).as_deref() == Some("https://") {
        Some(8)
    } else {
        None
    }
}

/// Whether `name` carries any URL scheme (`nbd://`, `http://`, `file://`...): such a name is
/// never joined to a base URL.
fn has_scheme(name: &str) -> bool {
    match name.find("://") {
        Some(i) if i > 0 => name[..i]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')),
        _ => false,
    }
}

/// The URL a name recorded in the image at `base` (a backing file name) stands for, as qemu
/// resolves it (`path_combine`): a URL as is; a relative name replaces the last path segment of
/// `base` (its query and fragment dropped: a presigned query belongs to that one object).
/// `None` for a name that is an absolute host path (qemu would open that host file; a remote
/// image does not get to name files on this machine).
pub fn resolve(base: &str, name: &str) -> Option<String> {
    if has_scheme(name) {
        return Some(name.to_string());
    }
    if name.starts_with('/') {
        return None;
    }
    let path_start = scheme_len(base)?;
    let end = base.find(['?', '#']).unwrap_or(base.len());
    let base = &base[..end];
    // The directory part: up to and including the last '/' after the authority.
    let dir = match base[path_start..].find('/') {
        Some(first) => {
            let last = base.rfind('/').unwrap_or(path_start + first);
            &base[..=last]
        }
        None => return Some(format!("{base}/{name}")),
    };
    Some(format!("{dir}{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_http_name("http://h/x"));
        assert!(is_http_name("HTTPS://h/x"));
        assert!(!is_http_name("nbd://h/x"));
        assert!(!is_http_name("./http://h"));
        assert!(!is_http_name("http:/h"));
    }

    #[test]
    fn backing_names_resolve_against_the_url() {
        let r = |b, n| resolve(b, n);
        assert_eq!(
            r("http://h/dir/top.qcow2", "base.qcow2").as_deref(),
            Some("http://h/dir/base.qcow2")
        );
        assert_eq!(
            r("https://h:8443/a/b/top?X-Sig=1/2#f", "../base").as_deref(),
            Some("https://h:8443/a/b/../base")
        );
        assert_eq!(r("http://h", "b").as_deref(), Some("http://h/b"));
        assert_eq!(r("http://h/top", "b").as_deref(), Some("http://h/b"));
        assert_eq!(
            r("http://h/top", "https://o/b").as_deref(),
            Some("https://o/b")
        );
        assert_eq!(r("http://h/top", "nbd://o/b").as_deref(), Some("nbd://o/b"));
        assert_eq!(r("http://h/top", "/etc/passwd"), None);
    }
}
