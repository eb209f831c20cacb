//! The little of the kernel's BTF (`/sys/kernel/btf/vmlinux`) the deletion probe needs:
//! the type id of a function (what an fentry program attaches to), its parameters'
//! types (checked against what the program reads), and the byte offset of a member
//! path such as `sock.__sk_common.skc_net.net` (the layout differs between kernels).
//!
//! A bounded parser: every read is checked against the blob, every loop is bounded by
//! the blob's size; a blob it does not understand is an error, never a panic.

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

/// One type, read in place from the type section.
#[derive(Debug, Clone, Copy)]
struct Type<'a> {
    name: u32,
    kind: u32,
    kind_flag: bool,
    /// `size` for structs and unions, the referenced type for pointers, typedefs,
    /// modifiers and functions.
    size_or_type: u32,
    /// The bytes after the 12-byte header: members, parameters or kind data.
    tail: &'a [u8],
    vlen: usize,
}

impl Type<'_> {
    const VOID: Type<'static> = Type {
        name: 0,
        kind: 0,
        kind_flag: false,
        size_or_type: 0,
        tail: &[],
        vlen: 0,
    };

    /// A struct's or union's members, or a prototype's parameters (nothing for any
    /// other kind). The parse checked that they fit.
    fn members(&self) -> impl Iterator<Item = Member> + '_ {
        let (step, n) = match self.kind {
            KIND_STRUCT | KIND_UNION => (12, self.vlen),
            KIND_FUNC_PROTO => (8, self.vlen),
            _ => (12, 0),
        };
        let kind_flag = self.kind_flag;
        self.tail.chunks_exact(step).take(n).map(move |m| Member {
            name: u32::from_ne_bytes([m[0], m[1], m[2], m[3]]),
            ty: u32::from_ne_bytes([m[4], m[5], m[6], m[7]]),
            bits: if step == 12 {
                member_bits(u32::from_ne_bytes([m[8], m[9], m[10], m[11]]), kind_flag)
            } else {
                0
            },
        })
    }
}

/// A parsed BTF blob: the file as read and where each type starts in it. Nothing is
/// copied out: the kernel's BTF has some 150 000 types, and the probe looks up five
/// names once, so a name is found by a scan rather than through an index of every
/// name (which took ~20 MiB of small allocations and most of a start's CPU).
#[derive(Debug)]
pub struct Btf {
    blob: Vec<u8>,
    types: std::ops::Range<usize>,
    strings: std::ops::Range<usize>,
    /// Where each type's record starts in the type section; index 0 is the implicit
    /// `void` (its entry is unused).
    starts: Vec<u32>,
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

/// The size of a type's record after its 12-byte header, checked to fit in `left`.
fn tail_len(kind: u32, vlen: usize, left: usize, id: usize) -> Result<usize, BtfError> {
    let len = match kind {
        KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
        KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
        | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
        KIND_ARRAY => 12,
        KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => vlen.saturating_mul(12),
        KIND_FUNC_PROTO | KIND_ENUM => vlen.saturating_mul(8),
        other => return err(format!("unknown kind {other} at type {id}")),
    };
    if len > left {
        return err(format!("type {id} runs past the type section"));
    }
    Ok(len)
}

impl Btf {
    /// The running kernel's BTF.
    pub fn vmlinux() -> Result<Self, BtfError> {
        let path = "/sys/kernel/btf/vmlinux";
        let blob = std::fs::read(path).map_err(|e| BtfError(format!("reading {path}: {e}")))?;
        Self::from_blob(blob)
    }

    /// Parses a blob in the host's byte order (the kernel's BTF always is).
    pub fn parse(blob: &[u8]) -> Result<Self, BtfError> {
        Self::from_blob(blob.to_vec())
    }

    fn from_blob(blob: Vec<u8>) -> Result<Self, BtfError> {
        if u16_at(&blob, 0)? != MAGIC {
            return err("bad magic (not BTF, or another byte order)");
        }
        let hdr_len = usize_of(u32_at(&blob, 4)?);
        let at = |field: usize| -> Result<usize, BtfError> { Ok(usize_of(u32_at(&blob, field)?)) };
        let (type_off, type_len, str_off, str_len) = (at(8)?, at(12)?, at(16)?, at(20)?);
        let section = |off: usize, len: usize| {
            let start = hdr_len.checked_add(off)?;
            let range = start..start.checked_add(len)?;
            blob.get(range.clone()).map(|_| range)
        };
        let (Some(types), Some(strings)) = (section(type_off, type_len), section(str_off, str_len))
        else {
            return err("a section lies outside the blob");
        };
        let section = &blob[types.clone()];
        let mut starts = vec![0u32];
        let mut pos = 0;
        while pos < section.len() {
            let id = starts.len();
            let start =
                u32::try_from(pos).map_err(|_| BtfError("the type section is too large".into()))?;
            let info = u32_at(section, pos + 4)?;
            u32_at(section, pos + 8)?;
            pos += 12;
            let (kind, vlen) = ((info >> 24) & 0x1f, usize_of(info & 0xffff));
            pos += tail_len(kind, vlen, section.len() - pos.min(section.len()), id)?;
            if id > usize_of(u32::MAX) {
                return err("too many types");
            }
            starts.push(start);
        }
        Ok(Btf {
            blob,
            types,
            strings,
            starts,
        })
    }

    fn name(&self, off: u32) -> Result<&str, BtfError> {
        let rest = self.blob[self.strings.clone()]
            .get(usize_of(off)..)
            .ok_or_else(|| BtfError(format!("name offset {off} outside the strings")))?;
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end])
            .map_err(|_| BtfError(format!("name at {off} is not UTF-8")))
    }

    /// Whether the name at `off` is `want` (without reading it as UTF-8).
    fn name_is(&self, off: u32, want: &str) -> bool {
        let rest = self.blob[self.strings.clone()]
            .get(usize_of(off)..)
            .unwrap_or_default();
        rest.strip_prefix(want.as_bytes())
            .is_some_and(|after| after.first().is_none_or(|&b| b == 0))
    }

    fn get(&self, id: u32) -> Result<Type<'_>, BtfError> {
        if id == 0 {
            return Ok(Type::VOID);
        }
        let start = self
            .starts
            .get(usize_of(id))
            .map(|&s| usize_of(s))
            .ok_or_else(|| BtfError(format!("type id {id} does not exist")))?;
        // The parse checked every record's bounds: these reads cannot fail.
        let section = &self.blob[self.types.clone()];
        let info = u32_at(section, start + 4)?;
        let kind = (info >> 24) & 0x1f;
        let vlen = usize_of(info & 0xffff);
        let tail_start = start + 12;
        let len = tail_len(kind, vlen, section.len() - tail_start, usize_of(id))?;
        Ok(Type {
            name: u32_at(section, start)?,
            kind,
            kind_flag: info >> 31 == 1,
            size_or_type: u32_at(section, start + 8)?,
            tail: &section[tail_start..tail_start + len],
            vlen,
        })
    }

    /// `id` with typedefs and const/volatile/restrict/type tags looked through.
    fn resolve(&self, mut id: u32) -> Result<Type<'_>, BtfError> {
        // A chain longer than the type table is a loop.
        for _ in 0..self.starts.len() {
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

    /// The one type of `kind` named `name` (a struct must be complete, not a forward
    /// declaration's empty shell).
    fn named(&self, name: &str, kind: u32) -> Result<u32, BtfError> {
        let mut found = None;
        for id in 1..self.starts.len() {
            let id = u32::try_from(id).map_err(|_| BtfError("too many types".into()))?;
            let t = self.get(id)?;
            if t.kind != kind
                || t.name == 0
                || (kind == KIND_STRUCT && t.size_or_type == 0)
                || !self.name_is(t.name, name)
            {
                continue;
            }
            if found.is_some() {
                return err(format!("more than one {} named {name}", kind_name(kind)));
            }
            found = Some(id);
        }
        found.ok_or_else(|| BtfError(format!("no {} named {name}", kind_name(kind))))
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
        for p in proto.members() {
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
                .find_member(&ty, field, 0)?
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
        ty: &Type<'_>,
        field: &str,
        depth: u32,
    ) -> Result<Option<(u32, u32)>, BtfError> {
        if !matches!(ty.kind, KIND_STRUCT | KIND_UNION) || depth > 8 {
            return Ok(None);
        }
        for m in ty.members() {
            if m.name != 0 {
                if self.name(m.name)? == field {
                    return Ok(Some((m.bits, m.ty)));
                }
            } else if let Some((at, t)) =
                self.find_member(&self.resolve(m.ty)?, field, depth + 1)?
            {
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

#[cfg(test)]
#[allow(clippy::unwrap_used)] // In tests a panic is the failure report.
mod tests {
    use super::*;

    /// A blob builder: types in order (ids from 1), names in one string section.
    #[derive(Default)]
    struct Blob {
        types: Vec<u8>,
        strings: Vec<u8>,
        next: u32,
    }

    impl Blob {
        fn new() -> Self {
            Self {
                strings: vec![0],
                next: 1,
                ..Self::default()
            }
        }

        fn name(&mut self, name: &str) -> u32 {
            if name.is_empty() {
                return 0;
            }
            let at = u32::try_from(self.strings.len()).unwrap();
            self.strings.extend(name.as_bytes());
            self.strings.push(0);
            at
        }

        /// Adds a type; `tail` is its record after the header. Returns its id.
        fn add(
            &mut self,
            name: &str,
            kind: u32,
            vlen: u32,
            size_or_type: u32,
            tail: &[u32],
        ) -> u32 {
            let name = self.name(name);
            self.types.extend(name.to_ne_bytes());
            self.types.extend(((kind << 24) | vlen).to_ne_bytes());
            self.types.extend(size_or_type.to_ne_bytes());
            for word in tail {
                self.types.extend(word.to_ne_bytes());
            }
            self.next += 1;
            self.next - 1
        }

        /// A struct (or union) of `(name, type, bit offset)` members.
        fn composite(
            &mut self,
            kind: u32,
            name: &str,
            size: u32,
            members: &[(&str, u32, u32)],
        ) -> u32 {
            let mut tail = Vec::new();
            for (n, ty, bits) in members {
                tail.extend([self.name(n), *ty, *bits]);
            }
            self.add(
                name,
                kind,
                u32::try_from(members.len()).unwrap(),
                size,
                &tail,
            )
        }

        fn bytes(&self) -> Vec<u8> {
            let mut b = Vec::new();
            b.extend(MAGIC.to_ne_bytes());
            b.extend([1u8, 0]);
            b.extend(24u32.to_ne_bytes());
            let type_len = u32::try_from(self.types.len()).unwrap();
            b.extend(0u32.to_ne_bytes());
            b.extend(type_len.to_ne_bytes());
            b.extend(type_len.to_ne_bytes());
            b.extend(u32::try_from(self.strings.len()).unwrap().to_ne_bytes());
            b.extend(&self.types);
            b.extend(&self.strings);
            b
        }
    }

    /// `struct net { int x; struct { u64 pad; struct ns_common ns; }; }`-like types, a
    /// forward declaration of `sock` next to the real one, a function taking
    /// `(const struct sock *, void *, int)`.
    fn sample() -> Blob {
        let mut b = Blob::new();
        let int = b.add("int", KIND_INT, 0, 4, &[32]);
        let ns_common = b.composite(
            KIND_STRUCT,
            "ns_common",
            8,
            &[("stash", int, 0), ("inum", int, 32)],
        );
        let anon = b.composite(
            KIND_UNION,
            "",
            16,
            &[("pad", int, 0), ("ns", ns_common, 64)],
        );
        let net = b.composite(KIND_STRUCT, "net", 24, &[("x", int, 0), ("", anon, 64)]);
        b.add("sock", KIND_FWD, 0, 0, &[]);
        let sock = b.composite(KIND_STRUCT, "sock", 8, &[("net", net, 0), ("flag", int, 3)]);
        let const_sock = b.add("", KIND_CONST, 0, sock, &[]);
        let p_sock = b.add("", KIND_PTR, 0, const_sock, &[]);
        let p_void = b.add("", KIND_PTR, 0, 0, &[]);
        let a = b.name("a");
        let proto = b.add("", KIND_FUNC_PROTO, 3, int, &[a, p_sock, 0, p_void, 0, int]);
        b.add("probe_me", KIND_FUNC, 0, proto, &[]);
        b.add("twice", KIND_TYPEDEF, 0, int, &[]);
        b.add("twice", KIND_TYPEDEF, 0, int, &[]);
        b.add("btf_trace_x", KIND_TYPEDEF, 0, proto, &[]);
        b
    }

    #[test]
    fn offsets_look_into_anonymous_members_and_skip_forward_declarations() {
        let btf = Btf::parse(&sample().bytes()).unwrap();
        // net: 8 bytes of x, then the anonymous union at 8, ns at 8 more, inum 4 in.
        assert_eq!(btf.offset_of("net", &["ns", "inum"]).unwrap(), 8 + 8 + 4);
        assert_eq!(btf.offset_of("sock", &["net", "x"]).unwrap(), 0);
        assert_eq!(
            btf.offset_of("sock", &["flag"]).unwrap_err().0,
            "sock.flag is a bitfield"
        );
        assert_eq!(
            btf.offset_of("net", &["ns", "nope"]).unwrap_err().0,
            "net: no member ns.nope"
        );
        assert_eq!(
            btf.offset_of("nothing", &["x"]).unwrap_err().0,
            "no struct named nothing"
        );
    }

    #[test]
    fn functions_name_their_pointer_parameters() {
        let btf = Btf::parse(&sample().bytes()).unwrap();
        let (id, params) = btf.function("probe_me").unwrap();
        assert_eq!(id, 11);
        assert_eq!(
            params,
            [Some("sock".to_owned()), Some("void".to_owned()), None]
        );
        assert_eq!(btf.typedef("btf_trace_x").unwrap(), 14);
        assert_eq!(
            btf.typedef("twice").unwrap_err().0,
            "more than one typedef named twice"
        );
        // A name is matched whole, not as a prefix.
        assert!(btf.function("probe").is_err());
        assert!(btf.typedef("btf_trace_").is_err());
    }

    #[test]
    fn a_record_past_its_section_or_an_unknown_kind_is_refused() {
        let mut b = sample();
        b.add("big", KIND_STRUCT, 1000, 8, &[]);
        assert_eq!(
            Btf::parse(&b.bytes()).unwrap_err().0,
            "type 15 runs past the type section"
        );
        let mut b = sample();
        b.add("odd", 31, 0, 0, &[]);
        assert_eq!(
            Btf::parse(&b.bytes()).unwrap_err().0,
            "unknown kind 31 at type 15"
        );
        let mut bytes = sample().bytes();
        bytes[0] ^= 0xff;
        assert!(Btf::parse(&bytes).is_err());
    }
}
