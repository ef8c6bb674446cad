//! RFC 5322 dates for the headers mailflow writes (`Received:`, replies), in UTC.

use std::time::{SystemTime, UNIX_EPOCH};

/// `Fri, 27 Nov 2026 17:12:05 +0000` for `time`.
pub fn rfc5322(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    format!(
        "{}, {} {} {} {:02}:{:02}:{:02} +0000",
        WEEKDAYS[days.rem_euclid(7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Appends [`rfc5322`] of now to `out`; the text is kept per thread for the rest of its second
/// (every accepted message carries a date: the formatting was 1.5 % of a message's instructions).
pub fn push_rfc5322_now(out: &mut String) {
    thread_local! {
        static NOW: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    NOW.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs {
            *cached = (secs, rfc5322(now));
        }
        out.push_str(&cached.1);
    });
}

/// Days since 1970-01-01 to (year, month, day); Howard Hinnant's algorithm.
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn known_dates() {
        assert_eq!(rfc5322(UNIX_EPOCH), "Thu, 1 Jan 1970 00:00:00 +0000");
        let (mut first, mut second) = (String::from("x"), String::new());
        let before = rfc5322(SystemTime::now());
        push_rfc5322_now(&mut first);
        push_rfc5322_now(&mut second);
        let after = rfc5322(SystemTime::now());
        assert!(first == format!("x{before}") || first == format!("x{after}"), "{first}");
        assert!(second == before || second == after, "{second}");
        assert_eq!(rfc5322(UNIX_EPOCH + Duration::from_secs(1_795_799_525)), "Fri, 27 Nov 2026 17:12:05 +0000");
        assert_eq!(rfc5322(UNIX_EPOCH + Duration::from_secs(951_782_400)), "Tue, 29 Feb 2000 00:00:00 +0000");
    }
}
