//! The identity file `DIR/node.id`: which node a data directory belongs to and which cluster.
//! Written once, atomically (temporary file, fsync, rename, fsync of the directory), versioned
//! and checksummed like every file Scribe writes. A directory of another node is refused.
//!
//! ```text
//! scribe-node-identity v1
//! name=<node name>
//! cluster=<cluster id, 32 hex digits>
//! crc32c=<checksum of the lines above, 8 hex digits>
//! ```

use std::collections::hash_map::RandomState;
use std::fs;
use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::path::Path;

const HEADER: &str = "scribe-node-identity v1";
const FILE: &str = "node.id";

/// Who a data directory belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The node's name.
    pub name: String,
    /// The cluster it was created in (or joined).
    pub cluster_id: String,
}

/// A fresh random cluster id.
pub fn new_cluster_id() -> String {
    let mut id = String::with_capacity(32);
    for _ in 0..2 {
        let mut h = RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.write_u32(std::process::id());
        id.push_str(&format!("{:016x}", h.finish()));
    }
    id
}

fn encode(id: &Identity) -> String {
    let body = format!("{HEADER}\nname={}\ncluster={}\n", id.name, id.cluster_id);
    format!("{body}crc32c={:08x}\n", crc32c::crc32c(body.as_bytes()))
}

fn decode(text: &str) -> Result<Identity, String> {
    let (body, crc_line) = text
        .trim_end_matches('\n')
        .rsplit_once('\n')
        .ok_or("too short")?;
    let body = format!("{body}\n");
    let crc = crc_line.strip_prefix("crc32c=").ok_or("no checksum line")?;
    if u32::from_str_radix(crc, 16).ok() != Some(crc32c::crc32c(body.as_bytes())) {
        return Err("checksum mismatch".into());
    }
    let mut lines = body.lines();
    if lines.next() != Some(HEADER) {
        return Err("unknown version".into());
    }
    let mut name = None;
    let mut cluster = None;
    for l in lines {
        match l.split_once('=') {
            Some(("name", v)) => name = Some(v.to_string()),
            Some(("cluster", v)) => cluster = Some(v.to_string()),
            _ => return Err(format!("unexpected line {l:?}")),
        }
    }
    Ok(Identity {
        name: name.ok_or("no name")?,
        cluster_id: cluster.ok_or("no cluster id")?,
    })
}

/// Reads the identity of `dir`, creating it for `name` if the directory has none. A directory
/// that belongs to another node is an error.
pub fn load_or_create(dir: &Path, name: &str) -> Result<Identity, String> {
    let path = dir.join(FILE);
    match fs::read_to_string(&path) {
        Ok(text) => {
            let id =
                decode(&text).map_err(|e| format!("read identity file {}: {e}", path.display()))?;
            if id.name != name {
                return Err(format!(
                    "data directory {} belongs to node {:?}, not {name:?}: use that name or another directory",
                    dir.display(),
                    id.name
                ));
            }
            Ok(id)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = Identity {
                name: name.to_string(),
                cluster_id: new_cluster_id(),
            };
            write_atomically(dir, FILE, encode(&id).as_bytes())
                .map_err(|e| format!("write identity file {}: {e}", path.display()))?;
            Ok(id)
        }
        Err(e) => Err(format!("read identity file {}: {e}", path.display())),
    }
}

/// Writes `name` in `dir` atomically: temporary file, fsync, rename, fsync of the directory.
pub fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, dir.join(name))?;
    fs::File::open(dir)?.sync_all()
}

/// Rewrites the identity of `dir` to belong to `cluster_id`: an empty replica joining its
/// primary's cluster.
pub fn adopt_cluster(dir: &Path, name: &str, cluster_id: &str) -> Result<(), String> {
    let id = Identity {
        name: name.to_string(),
        cluster_id: cluster_id.to_string(),
    };
    write_atomically(dir, FILE, encode(&id).as_bytes())
        .map_err(|e| format!("write identity file {}: {e}", dir.join(FILE).display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_created_once_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path(), "n1").unwrap();
        assert_eq!(a.cluster_id.len(), 32);
        assert_eq!(load_or_create(dir.path(), "n1").unwrap(), a);
        let e = load_or_create(dir.path(), "n2").unwrap_err();
        assert!(e.contains("belongs to node \"n1\""), "{e}");
        let path = dir.path().join(FILE);
        let text = fs::read_to_string(&path)
            .unwrap()
            .replace("name=n1", "name=n9");
        fs::write(&path, text).unwrap();
        assert!(load_or_create(dir.path(), "n9")
            .unwrap_err()
            .contains("checksum"));
    }
}
