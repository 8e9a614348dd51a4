//! Parsing of flag values, with errors that show the valid forms.

use std::time::Duration;

use wpool::Chunksize;

/// `-j`: one worker count, or (for `wpool bench`) several, `1,2,4,8`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jobs(pub Vec<usize>);

impl Jobs {
    /// The one worker count of a run: a list is for `wpool bench` only.
    pub fn one(&self) -> Result<usize, String> {
        match self.0[..] {
            [n] => Ok(n),
            _ => Err(format!(
                "-j {}: a list of worker counts is for `wpool bench`; give one number",
                self.0.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(",")
            )),
        }
    }
}

/// One number of worker processes.
pub fn parse_workers(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1 (a number of worker processes, e.g. `-j 4`)".to_string()),
        Ok(n) if n > 4096 => Err(format!("{n} workers is more than the 4096 wpool allows")),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("`{s}` is not a number of worker processes (e.g. `-j 4`, or `-j 1,2,4` for bench)")),
    }
}

pub fn parse_jobs(s: &str) -> Result<Jobs, String> {
    let counts = s.split(',').map(parse_workers).collect::<Result<Vec<_>, _>>()?;
    let mut sorted = counts.clone();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != counts.len() {
        return Err(format!("`{s}` names a worker count twice"));
    }
    Ok(Jobs(counts))
}

pub fn parse_chunksize(s: &str) -> Result<Chunksize, String> {
    if s == "auto" {
        return Ok(Chunksize::Auto);
    }
    match s.parse::<usize>() {
        Ok(0) | Err(_) => Err(format!("`{s}` is not a chunk size: use a number of items ≥ 1, or `auto`")),
        Ok(n) => Ok(Chunksize::Fixed(n)),
    }
}

/// `500ms`, `2s`, `1.5s`, `1m`, `1h`, `250us`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("`{s}` is not a duration: use a number with a unit, e.g. `500ms`, `2s`, `1.5s`, `1m`");
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
    let (num, unit) = s.split_at(split);
    let value: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "us" | "µs" => value / 1e6,
        "ms" => value / 1e3,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(bad()),
    };
    if !(secs > 0.0 && secs.is_finite()) {
        return Err(format!("`{s}`: a duration must be greater than zero"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `64MiB`, `1GiB`, `512KiB`, `100MB` (decimal), `4096` or `4096B`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    wpool::Limits::parse_size(s).ok_or_else(|| {
        format!("`{s}` is not a size: use a number with a unit, e.g. `64MiB`, `1GiB`, `512KiB`, `100MB`, or bytes")
    })
}

/// `--max-item-size`: a size no larger than an item can be.
pub fn parse_item_size(s: &str) -> Result<u64, String> {
    let size = parse_size(s)?;
    let max = wpool::Limits::MAX_ITEM_SIZE as u64;
    if size > max {
        return Err(format!(
            "`{s}` ({size} bytes) is over the largest item size, 2GiB ({max} bytes): an item and its result must \
             fit in the kernel's wasm32 memory, which ends at 4GiB"
        ));
    }
    Ok(size)
}

/// A command line split into words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Words(pub Vec<String>);

/// A launcher command line split into words the way `sh` would (single
/// and double quotes, backslash escapes), without any expansion.
pub fn parse_command(s: &str) -> Result<Words, String> {
    let words = shell_words::split(s).map_err(|e| format!("`{s}`: {e}"))?;
    if words.is_empty() {
        return Err("an empty launcher command (e.g. `--launcher \"ssh HOST\"`)".into());
    }
    Ok(Words(words))
}

/// `IP`, `IP:PORT` or `[IPv6]:PORT`; port 0 (or none) picks a free port.
pub fn parse_listen(s: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(addr) = s.parse::<std::net::SocketAddr>() {
        return Ok(addr);
    }
    match s.parse::<std::net::IpAddr>() {
        Ok(ip) => Ok(std::net::SocketAddr::new(ip, 0)),
        Err(_) => Err(format!("`{s}` is not an address to listen on: use an IP address, with `:PORT` if needed")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launcher_commands_split_like_a_shell() {
        assert_eq!(parse_command("srun -N1 -n1").unwrap().0, ["srun", "-N1", "-n1"]);
        assert_eq!(
            parse_command(r#"ssh -o 'Opt=a b' "x\"y" c\ d ''"#).unwrap().0,
            ["ssh", "-o", "Opt=a b", "x\"y", "c d", ""]
        );
        // Inside double quotes a backslash escapes only `$`, `` ` ``, `"`,
        // `\` and a newline, as in sh: `printf '%s\n' "a\ b" 'c d' "e\"f"`
        // prints `a\ b`, `c d`, `e"f`.
        assert_eq!(parse_command(r#""a\ b" 'c d' "e\"f""#).unwrap().0, [r"a\ b", "c d", "e\"f"]);
        assert_eq!(parse_command(r"'a\b' c\\d").unwrap().0, [r"a\b", r"c\d"]);
        assert!(parse_command("  ").is_err());
        assert!(parse_command("ssh 'host").is_err());
        // A trailing backslash stays, as in dash.
        assert_eq!(parse_command("ssh host\\").unwrap().0, ["ssh", "host\\"]);
    }

    #[test]
    fn listen_addresses_take_an_optional_port() {
        assert_eq!(parse_listen("127.0.0.1").unwrap(), "127.0.0.1:0".parse().unwrap());
        assert_eq!(parse_listen("10.0.0.1:7000").unwrap(), "10.0.0.1:7000".parse().unwrap());
        assert_eq!(parse_listen("[::1]:9").unwrap(), "[::1]:9".parse().unwrap());
        assert!(parse_listen("host").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("abc").unwrap_err().contains("500ms"));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("0s").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("100MB"), Ok(100_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12XB").unwrap_err().contains("64MiB"));
    }

    #[test]
    fn jobs_and_chunks() {
        assert!(parse_jobs("0").is_err());
        assert_eq!(parse_jobs("3"), Ok(Jobs(vec![3])));
        assert_eq!(parse_jobs("1,2,8"), Ok(Jobs(vec![1, 2, 8])));
        assert!(parse_jobs("1,,2").is_err());
        assert!(parse_jobs("2,2").unwrap_err().contains("twice"));
        assert!(parse_jobs("1,2").unwrap().one().unwrap_err().contains("wpool bench"));
        assert_eq!(parse_chunksize("auto"), Ok(Chunksize::Auto));
        assert_eq!(parse_chunksize("8"), Ok(Chunksize::Fixed(8)));
        assert!(parse_chunksize("0").is_err());
    }
}
