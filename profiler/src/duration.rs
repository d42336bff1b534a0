//! Durations as people write them on a command line or in a config file: `500ms`, `30s`,
//! `2m`, `1h 30m` (the `humantime` crate's syntax), or a plain number of seconds (`1.5`).
use std::time::Duration;

/// The shortest duration any option takes: below it a window or an interval means nothing.
const SHORTEST: Duration = Duration::from_millis(1);

/// Parse a duration of 1 ms or more; the error names the text and the expected form.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let duration = if let Ok(seconds) = text.parse::<f64>() {
        Duration::try_from_secs_f64(seconds)
            .map_err(|_| format!("{text:?} is not a duration of 1ms or more"))?
    } else {
        humantime::parse_duration(text)
            .map_err(|error| format!("{text:?} is not a duration like 30s or 500ms ({error})"))?
    };
    if duration < SHORTEST {
        return Err(format!("{text:?} must be a duration of 1ms or more"));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("1.5"), Ok(Duration::from_millis(1500)));
        for bad in [
            "",
            "s",
            "0s",
            "-1s",
            "10x",
            "fast",
            "0.0001",
            "100us",
            "99999999999999999999999h",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
