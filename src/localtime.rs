//! Local time formatting for snapshot dates, as qemu prints them (`%Y-%m-%d %H:%M:%S` in the
//! local time zone).

/// Formats seconds since the epoch as local `YYYY-MM-DD HH:MM:SS`.
pub fn format_local(secs: i64) -> String {
    let t: libc::time_t = secs as libc::time_t;
    // SAFETY: `tm` is plain old data that localtime_r fully initialises on success; both
    // pointers are valid for the duration of the call and not aliased.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            return secs.to_string();
        }
        tm
    };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        i64::from(tm.tm_year) + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}
