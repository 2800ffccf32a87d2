//! Pagination for ListVolumes and ListSnapshots. The token names the first entry of the next
//! page (entries are sorted by name), so deletes between pages neither skip nor repeat entries.
//! A token this driver did not hand out is `ABORTED`, as the spec asks.

use super::error::CsiError;

const PREFIX: &str = "after:";

/// One page of `items` (sorted by `key`) from `token`, at most `max_entries` (0 = all), and the
/// token for the next page ("" when this is the last).
pub fn page<T>(
    mut items: Vec<T>,
    key: impl Fn(&T) -> &str,
    token: &str,
    max_entries: i32,
) -> Result<(Vec<T>, String), CsiError> {
    if max_entries < 0 {
        return Err(CsiError::invalid(format!("max_entries {max_entries} is negative")));
    }
    items.sort_by(|a, b| key(a).cmp(key(b)));
    let start = if token.is_empty() {
        0
    } else {
        let after = token
            .strip_prefix(PREFIX)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| CsiError::Aborted(format!("starting_token {token:?} was not handed out by this driver")))?;
        items.partition_point(|i| key(i) <= after)
    };
    let rest: Vec<T> = items.into_iter().skip(start).collect();
    let n = if max_entries == 0 { rest.len() } else { (max_entries as usize).min(rest.len()) };
    let more = rest.len() > n;
    let page: Vec<T> = rest.into_iter().take(n).collect();
    let next = match (more, page.last()) {
        (true, Some(last)) => format!("{PREFIX}{}", key(last)),
        _ => String::new(),
    };
    Ok((page, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("v{i:02}")).collect()
    }

    #[test]
    fn pages_cover_everything_once() {
        let all = names(7);
        let mut seen = vec![];
        let mut token = String::new();
        loop {
            let (p, next) = page(all.clone(), |s| s.as_str(), &token, 3).unwrap();
            seen.extend(p);
            if next.is_empty() {
                break;
            }
            token = next;
        }
        assert_eq!(seen, all);
    }

    #[test]
    fn zero_means_all_and_deletes_between_pages_skip_nothing() {
        let (p, next) = page(names(5), |s| s.as_str(), "", 0).unwrap();
        assert_eq!((p.len(), next.as_str()), (5, ""));
        let (p1, next) = page(names(5), |s| s.as_str(), "", 2).unwrap();
        assert_eq!(p1, vec!["v00", "v01"]);
        // v01 is deleted before the next page is asked for.
        let remaining: Vec<String> = names(5).into_iter().filter(|n| n != "v01").collect();
        let (p2, _) = page(remaining, |s| s.as_str(), &next, 2).unwrap();
        assert_eq!(p2, vec!["v02", "v03"]);
    }

    #[test]
    fn bad_tokens_and_sizes() {
        assert!(matches!(page(names(3), |s| s.as_str(), "garbage", 1), Err(CsiError::Aborted(_))));
        assert!(matches!(page(names(3), |s| s.as_str(), "after:", 1), Err(CsiError::Aborted(_))));
        assert!(matches!(page(names(3), |s| s.as_str(), "", -1), Err(CsiError::InvalidArgument(_))));
        let (p, next) = page(names(3), |s| s.as_str(), "after:zzz", 1).unwrap();
        assert!(p.is_empty() && next.is_empty());
    }
}
