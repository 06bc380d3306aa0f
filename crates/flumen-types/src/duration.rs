//! Durations as flumen's options and clauses write them.

/// Nanoseconds of a duration written as flumen takes them everywhere:
/// `200ms`, `10s`, `10 s`, `5 min`, `2 hours`, `1d` (a bare number is seconds).
pub fn duration_nanos(text: &str) -> Option<i64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: i64 = number.parse().ok()?;
    let unit_ns: i64 = match unit.trim().to_lowercase().trim_end_matches('s') {
        "m" if unit.trim() == "ms" => 1_000_000,
        "millisecond" => 1_000_000,
        "" | "sec" | "second" => 1_000_000_000,
        "min" | "minute" => 60_000_000_000,
        "h" | "hour" => 3_600_000_000_000,
        "d" | "day" => 86_400_000_000_000,
        _ => return None,
    };
    number.checked_mul(unit_ns)
}

#[cfg(test)]
mod tests {
    use super::duration_nanos;

    #[test]
    fn durations_take_short_and_long_units() {
        assert_eq!(duration_nanos("500 ms"), Some(500_000_000));
        assert_eq!(duration_nanos("10 s"), Some(10_000_000_000));
        assert_eq!(duration_nanos("10"), Some(10_000_000_000));
        assert_eq!(duration_nanos("5 min"), Some(300_000_000_000));
        assert_eq!(duration_nanos("2 hours"), Some(7_200_000_000_000));
        assert_eq!(duration_nanos("1d"), Some(86_400_000_000_000));
        assert_eq!(duration_nanos("ten s"), None);
        assert_eq!(duration_nanos("3 weeks"), None);
    }
}
