//! Turns `key,value` lines into `key\tvalue` lines, the input of a MapReduce
//! reducer (for example `stats`). Each line is split at its first comma; key
//! and value lose surrounding ASCII whitespace; blank lines are skipped.

struct CsvKv;

impl wpool_guest::Kernel for CsvKv {
    fn map(input: Vec<u8>) -> Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(input.len() + 1);
        for (i, line) in input.split(|&b| b == b'\n').enumerate() {
            let line = line.trim_ascii();
            if line.is_empty() {
                continue;
            }
            let n = i + 1;
            let comma = line.iter().position(|&b| b == b',').ok_or_else(|| format!("csv-kv: line {n} has no comma"))?;
            let key = line[..comma].trim_ascii();
            if key.contains(&b'\t') {
                return Err(format!("csv-kv: line {n} has a tab in its key"));
            }
            out.extend_from_slice(key);
            out.push(b'\t');
            out.extend_from_slice(line[comma + 1..].trim_ascii());
            out.push(b'\n');
        }
        Ok(out)
    }
}

wpool_guest::export!(CsvKv);

#[cfg(test)]
mod tests {
    use super::*;
    use wpool_guest::Kernel;

    fn map(input: &str) -> Result<String, String> {
        CsvKv::map(input.as_bytes().to_vec()).map(|out| String::from_utf8(out).unwrap())
    }

    #[test]
    fn converts_lines() {
        assert_eq!(map("a,1\r\n\n b , 2.5 \nc,x,y").unwrap(), "a\t1\nb\t2.5\nc\tx,y\n");
        assert_eq!(map("").unwrap(), "");
        assert_eq!(map("a,").unwrap(), "a\t\n");
    }

    #[test]
    fn reports_bad_lines() {
        assert_eq!(map("a,1\n\nb 2\n").unwrap_err(), "csv-kv: line 3 has no comma");
        assert_eq!(map("a\tb,1").unwrap_err(), "csv-kv: line 1 has a tab in its key");
    }
}
