//! The little of the kernel's BTF (`/sys/kernel/btf/vmlinux`) the deletion probe needs:
//! the type id of a function (what an fentry program attaches to), its parameters'
//! types (checked against what the program reads), and the byte offset of a member
//! path such as `sock.__sk_common.skc_net.net` (the layout differs between kernels).
//!
//! A bounded parser: every read is checked against the blob, every loop is bounded by
//! the blob's size; a blob it does not understand is an error, never a panic.

use std::collections::HashMap;

/// What went wrong reading BTF; the text says where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("BTF: {0}")]
pub struct BtfError(pub String);

fn err<T>(what: impl Into<String>) -> Result<T, BtfError> {
    Err(BtfError(what.into()))
}

const MAGIC: u16 = 0xeb9f;

// Kinds (include/uapi/linux/btf.h).
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// One member of a struct or union, or one parameter of a function prototype.
#[derive(Debug, Clone, Copy)]
struct Member {
    name: u32,
    ty: u32,
    /// Bit offset (members only; 0 for parameters).
    bits: u32,
}

#[derive(Debug, Clone)]
struct Type {
    name: u32,
    kind: u32,
    /// `size` for structs and unions, the referenced type for pointers, typedefs,
    /// modifiers and functions.
    size_or_type: u32,
    members: Vec<Member>,
}

/// A parsed BTF blob.
#[derive(Debug)]
pub struct Btf {
    /// Index 0 is the implicit `void`.
    types: Vec<Type>,
    strings: Vec<u8>,
    by_name: HashMap<String, Vec<u32>>,
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, BtfError> {
    match b.get(at..at + 2) {
        Some(s) => Ok(u16::from_ne_bytes([s[0], s[1]])),
        None => err(format!("truncated at byte {at}")),
    }
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, BtfError> {
    match b.get(at..at + 4) {
        Some(s) => Ok(u32::from_ne_bytes([s[0], s[1], s[2], s[3]])),
        None => err(format!("truncated at byte {at}")),
    }
}

fn usize_of(v: u32) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// How a member's offset field reads: with `kind_flag` the low 24 bits are the bit
/// offset (the high 8 the bitfield size).
fn member_bits(raw: u32, kind_flag: bool) -> u32 {
    if kind_flag { raw & 0x00ff_ffff } else { raw }
}

impl Btf {
    /// The running kernel's BTF.
    pub fn vmlinux() -> Result<Self, BtfError> {
        let path = "/sys/kernel/btf/vmlinux";
        let blob = std::fs::read(path).map_err(|e| BtfError(format!("reading {path}: {e}")))?;
        Self::parse(&blob)
    }

    /// Parses a blob in the host's byte order (the kernel's BTF always is).
    pub fn parse(blob: &[u8]) -> Result<Self, BtfError> {
        if u16_at(blob, 0)? != MAGIC {
            return err("bad magic (not BTF, or another byte order)");
        }
        let hdr_len = usize_of(u32_at(blob, 4)?);
        let at = |field: usize| -> Result<usize, BtfError> { Ok(usize_of(u32_at(blob, field)?)) };
        let (type_off, type_len, str_off, str_len) = (at(8)?, at(12)?, at(16)?, at(20)?);
        let section = |off: usize, len: usize| {
            hdr_len
                .checked_add(off)
                .and_then(|start| Some(start..start.checked_add(len)?))
                .and_then(|range| blob.get(range))
        };
        let (Some(types), Some(strings)) = (section(type_off, type_len), section(str_off, str_len))
        else {
            return err("a section lies outside the blob");
        };
        let mut btf = Btf {
            types: vec![Type {
                name: 0,
                kind: 0,
                size_or_type: 0,
                members: Vec::new(),
            }],
            strings: strings.to_vec(),
            by_name: HashMap::new(),
        };
        let mut pos = 0;
        while pos < types.len() {
            let name = u32_at(types, pos)?;
            let info = u32_at(types, pos + 4)?;
            let size_or_type = u32_at(types, pos + 8)?;
            pos += 12;
            let vlen = usize_of(info & 0xffff);
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let mut members = Vec::new();
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION => {
                    // Bounded by the section: `vlen` entries must fit in what is left.
                    if vlen.saturating_mul(12) > types.len() - pos.min(types.len()) {
                        return err(format!(
                            "type {} has more members than bytes",
                            btf.types.len()
                        ));
                    }
                    for i in 0..vlen {
                        let m = pos + i * 12;
                        members.push(Member {
                            name: u32_at(types, m)?,
                            ty: u32_at(types, m + 4)?,
                            bits: member_bits(u32_at(types, m + 8)?, kind_flag),
                        });
                    }
                    vlen * 12
                }
                KIND_FUNC_PROTO => {
                    if vlen.saturating_mul(8) > types.len() - pos.min(types.len()) {
                        return err(format!(
                            "type {} has more parameters than bytes",
                            btf.types.len()
                        ));
                    }
                    for i in 0..vlen {
                        let m = pos + i * 8;
                        members.push(Member {
                            name: u32_at(types, m)?,
                            ty: u32_at(types, m + 4)?,
                            bits: 0,
                        });
                    }
                    vlen * 8
                }
                KIND_ENUM => vlen.saturating_mul(8),
                KIND_DATASEC | KIND_ENUM64 => vlen.saturating_mul(12),
                other => return err(format!("unknown kind {other} at type {}", btf.types.len())),
            };
            pos = pos.saturating_add(extra);
            if pos > types.len() {
                return err("the last type runs past the type section");
            }
            let id =
                u32::try_from(btf.types.len()).map_err(|_| BtfError("too many types".into()))?;
            if name != 0 {
                let text = btf.name(name)?.to_owned();
                btf.by_name.entry(text).or_default().push(id);
            }
            btf.types.push(Type {
                name,
                kind,
                size_or_type,
                members,
            });
        }
        Ok(btf)
    }

    fn name(&self, off: u32) -> Result<&str, BtfError> {
        let rest = self
            .strings
            .get(usize_of(off)..)
            .ok_or_else(|| BtfError(format!("name offset {off} outside the strings")))?;
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end])
            .map_err(|_| BtfError(format!("name at {off} is not UTF-8")))
    }

    fn get(&self, id: u32) -> Result<&Type, BtfError> {
        self.types
            .get(usize_of(id))
            .ok_or_else(|| BtfError(format!("type id {id} does not exist")))
    }

    /// `id` with typedefs and const/volatile/restrict/type tags looked through.
    fn resolve(&self, mut id: u32) -> Result<&Type, BtfError> {
        // A chain longer than the type table is a loop.
        for _ in 0..self.types.len() {
            let t = self.get(id)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type;
                }
                _ => return Ok(t),
            }
        }
        err(format!("type {id} refers to itself"))
    }

    fn named(&self, name: &str, kind: u32) -> Result<u32, BtfError> {
        let ids = self
            .by_name
            .get(name)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut found = ids.iter().filter(|&&id| {
            self.get(id)
                .is_ok_and(|t| t.kind == kind && (kind != KIND_STRUCT || t.size_or_type != 0))
        });
        match (found.next(), found.next()) {
            (Some(&id), None) => Ok(id),
            (None, _) => err(format!("no {} named {name}", kind_name(kind))),
            (Some(_), Some(_)) => err(format!("more than one {} named {name}", kind_name(kind))),
        }
    }

    /// The id of typedef `name` (a BTF tracepoint's `btf_trace_<name>`).
    pub fn typedef(&self, name: &str) -> Result<u32, BtfError> {
        self.named(name, KIND_TYPEDEF)
    }

    /// The id of function `name` (what `attach_btf_id` names) and the type names its
    /// parameters point to (`"sk_buff"` for `struct sk_buff *`, `"void"` for `void *`;
    /// `None` for a parameter that is not a pointer).
    pub fn function(&self, name: &str) -> Result<(u32, Vec<Option<String>>), BtfError> {
        let id = self.named(name, KIND_FUNC)?;
        let proto = self.get(self.get(id)?.size_or_type)?;
        if proto.kind != KIND_FUNC_PROTO {
            return err(format!("{name} has no prototype"));
        }
        let mut params = Vec::new();
        for p in &proto.members {
            let t = self.resolve(p.ty)?;
            params.push(if t.kind == KIND_PTR {
                let pointee = self.resolve(t.size_or_type)?;
                Some(if pointee.name == 0 {
                    "void".to_owned()
                } else {
                    self.name(pointee.name)?.to_owned()
                })
            } else {
                None
            });
        }
        Ok((id, params))
    }

    /// The byte offset of `path` (members, outer first) inside struct `outer`, looking
    /// into anonymous structs and unions on the way as C does.
    pub fn offset_of(&self, outer: &str, path: &[&str]) -> Result<u32, BtfError> {
        let mut ty = self.get(self.named(outer, KIND_STRUCT)?)?;
        let mut bits = 0u32;
        for (i, field) in path.iter().enumerate() {
            let (at, member_ty) = self
                .find_member(ty, field, 0)?
                .ok_or_else(|| BtfError(format!("{outer}: no member {}", path[..=i].join("."))))?;
            bits = bits.saturating_add(at);
            ty = self.resolve(member_ty)?;
        }
        if bits % 8 != 0 {
            return err(format!("{outer}.{} is a bitfield", path.join(".")));
        }
        Ok(bits / 8)
    }

    /// The bit offset and type of member `field` of `ty`, searching anonymous members.
    fn find_member(
        &self,
        ty: &Type,
        field: &str,
        depth: u32,
    ) -> Result<Option<(u32, u32)>, BtfError> {
        if !matches!(ty.kind, KIND_STRUCT | KIND_UNION) || depth > 8 {
            return Ok(None);
        }
        for m in &ty.members {
            if m.name != 0 {
                if self.name(m.name)? == field {
                    return Ok(Some((m.bits, m.ty)));
                }
            } else if let Some((at, t)) = self.find_member(self.resolve(m.ty)?, field, depth + 1)? {
                return Ok(Some((m.bits.saturating_add(at), t)));
            }
        }
        Ok(None)
    }
}

fn kind_name(kind: u32) -> &'static str {
    match kind {
        KIND_FUNC => "function",
        KIND_STRUCT => "struct",
        KIND_TYPEDEF => "typedef",
        _ => "type",
    }
}
