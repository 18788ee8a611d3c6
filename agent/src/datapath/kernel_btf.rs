//! Member offsets of the running kernel's structs, from its BTF
//! (`/sys/kernel/btf/vmlinux`): what a program built without CO-RE needs
//! to read kernel memory it is handed. Only what that takes is parsed.
use thiserror::Error;

/// Where the running kernel publishes its BTF.
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;
const HEADER_LEN: usize = 24;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
/// Kinds that only qualify or rename another type.
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("not BTF, or cut short")]
    Malformed,
    #[error("BTF kind {0} unknown")]
    UnknownKind(u32),
    #[error("no struct {0} in the kernel's BTF")]
    NoStruct(String),
    #[error("struct {0} has no member {1} at a whole byte")]
    NoMember(String, String),
}

/// Parsed type records of one BTF blob.
pub struct Btf<'a> {
    types: &'a [u8],
    strings: &'a [u8],
    /// Start of each type record in `types`; type id `n` is at `n - 1`.
    starts: Vec<usize>,
}

impl<'a> Btf<'a> {
    pub fn parse(data: &'a [u8]) -> Result<Self, BtfError> {
        if data.len() < HEADER_LEN || u16::from_ne_bytes([data[0], data[1]]) != MAGIC {
            return Err(BtfError::Malformed);
        }
        let word = |at: usize| u32_at(data, at).map(|v| v as usize);
        let hdr_len = word(4)?;
        let (type_off, type_len, str_off, str_len) = (word(8)?, word(12)?, word(16)?, word(20)?);
        let section = |off: usize, len: usize| {
            let start = hdr_len.checked_add(off).ok_or(BtfError::Malformed)?;
            data.get(start..start.checked_add(len).ok_or(BtfError::Malformed)?).ok_or(BtfError::Malformed)
        };
        let types = section(type_off, type_len)?;
        let strings = section(str_off, str_len)?;
        let mut starts = Vec::new();
        let mut at = 0;
        while at < types.len() {
            starts.push(at);
            let info = u32_at(types, at + 4)?;
            let vlen = (info & 0xffff) as usize;
            let extra = match (info >> 24) & 0x1f {
                2 | 7..=12 | 16 | 18 => 0,
                1 | 14 | 17 => 4,
                3 => 12,
                4 | 5 | 15 | 19 => 12 * vlen,
                6 | 13 => 8 * vlen,
                kind => return Err(BtfError::UnknownKind(kind)),
            };
            at += 12 + extra;
        }
        Ok(Self { types, strings, starts })
    }

    /// Byte offset of `member` in struct `strukt`, looking into anonymous
    /// structs and unions on the way.
    pub fn member_offset(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        let id = (1..=self.starts.len() as u32)
            .find(|&id| self.kind(id) == Some(KIND_STRUCT) && self.name(id).is_ok_and(|n| n == strukt))
            .ok_or_else(|| BtfError::NoStruct(strukt.to_owned()))?;
        self.find_member(id, member)?
            .filter(|bits| bits.is_multiple_of(8))
            .map(|bits| bits / 8)
            .ok_or_else(|| BtfError::NoMember(strukt.to_owned(), member.to_owned()))
    }

    /// Bit offset of `member` in struct or union `id`.
    fn find_member(&self, id: u32, member: &str) -> Result<Option<u32>, BtfError> {
        let at = self.start(id)?;
        let info = u32_at(self.types, at + 4)?;
        let bitfields = info >> 31 == 1;
        for m in 0..(info & 0xffff) as usize {
            let rec = at + 12 + 12 * m;
            let (name_off, ty, raw_offset) =
                (u32_at(self.types, rec)?, u32_at(self.types, rec + 4)?, u32_at(self.types, rec + 8)?);
            let offset = if bitfields { raw_offset & 0xff_ffff } else { raw_offset };
            if name_off != 0 {
                if self.string(name_off)? == member {
                    return Ok(Some(offset));
                }
                continue;
            }
            let inner = self.resolve(ty)?;
            if matches!(self.kind(inner), Some(KIND_STRUCT | KIND_UNION))
                && let Some(found) = self.find_member(inner, member)?
            {
                return Ok(Some(offset + found));
            }
        }
        Ok(None)
    }

    /// The type behind typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> Result<u32, BtfError> {
        for _ in 0..32 {
            match self.kind(id) {
                Some(KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG) => {
                    id = u32_at(self.types, self.start(id)? + 8)?;
                }
                _ => return Ok(id),
            }
        }
        Err(BtfError::Malformed)
    }

    fn start(&self, id: u32) -> Result<usize, BtfError> {
        id.checked_sub(1).and_then(|i| self.starts.get(i as usize)).copied().ok_or(BtfError::Malformed)
    }

    fn kind(&self, id: u32) -> Option<u32> {
        let at = self.start(id).ok()?;
        u32_at(self.types, at + 4).ok().map(|info| (info >> 24) & 0x1f)
    }

    fn name(&self, id: u32) -> Result<&'a str, BtfError> {
        self.string(u32_at(self.types, self.start(id)?)?)
    }

    fn string(&self, off: u32) -> Result<&'a str, BtfError> {
        let rest = self.strings.get(off as usize..).ok_or(BtfError::Malformed)?;
        let end = rest.iter().position(|&b| b == 0).ok_or(BtfError::Malformed)?;
        std::str::from_utf8(&rest[..end]).map_err(|_| BtfError::Malformed)
    }
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, BtfError> {
    let bytes = data.get(at..at + 4).ok_or(BtfError::Malformed)?;
    Ok(u32::from_ne_bytes(bytes.try_into().expect("four bytes")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// BTF of `struct outer { int a; char b:4; union { int x; struct { int inner; }; }; }`,
    /// with the union behind a typedef.
    fn sample() -> Vec<u8> {
        let strings = b"\0int\0outer\0a\0b\0x\0inner\0u_t\0";
        let s = |name: &str| {
            let mut at = 0;
            for part in strings.split(|&b| b == 0) {
                if part == name.as_bytes() {
                    return at as u32;
                }
                at += part.len() + 1;
            }
            panic!("{name}")
        };
        let info = |kind: u32, vlen: u32, kind_flag: bool| (u32::from(kind_flag) << 31) | (kind << 24) | vlen;
        let mut types: Vec<u32> = Vec::new();
        // 1: int
        types.extend([s("int"), info(1, 0, false), 4, 32]);
        // 2: struct { int inner; }
        types.extend([0, info(KIND_STRUCT, 1, false), 4, s("inner"), 1, 0]);
        // 3: union { int x; struct 2; }
        types.extend([0, info(KIND_UNION, 2, false), 4, s("x"), 1, 0, 0, 2, 0]);
        // 4: typedef u_t = union 3
        types.extend([s("u_t"), info(KIND_TYPEDEF, 0, false), 3]);
        // 5: struct outer, with a bitfield (so offsets carry bit sizes)
        types.extend([s("outer"), info(KIND_STRUCT, 3, true), 12, s("a"), 1, 0, s("b"), 1, (4 << 24) | 32, 0, 4, 64]);
        let type_bytes: Vec<u8> = types.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let mut blob = Vec::new();
        blob.extend(MAGIC.to_ne_bytes());
        blob.extend([1, 0]);
        for word in [HEADER_LEN as u32, 0, type_bytes.len() as u32, type_bytes.len() as u32, strings.len() as u32] {
            blob.extend(word.to_ne_bytes());
        }
        blob.extend(type_bytes);
        blob.extend(strings);
        blob
    }

    #[test]
    fn finds_members_directly_and_through_anonymous_unions_and_structs() {
        let blob = sample();
        let btf = Btf::parse(&blob).unwrap();
        assert_eq!(btf.member_offset("outer", "a"), Ok(0));
        assert_eq!(btf.member_offset("outer", "x"), Ok(8));
        assert_eq!(btf.member_offset("outer", "inner"), Ok(8));
        // A bitfield at bit 32 is found, then refused only if not at a byte.
        assert_eq!(btf.member_offset("outer", "b"), Ok(4));
        assert_eq!(btf.member_offset("outer", "c"), Err(BtfError::NoMember("outer".into(), "c".into())));
        assert_eq!(btf.member_offset("sk_buff", "data"), Err(BtfError::NoStruct("sk_buff".into())));
    }

    #[test]
    fn refuses_what_is_not_btf() {
        assert!(Btf::parse(b"not btf at all, not at all").is_err());
        let mut blob = sample();
        blob.truncate(blob.len() - 10);
        assert_eq!(Btf::parse(&blob).err(), Some(BtfError::Malformed));
    }

    #[test]
    fn reads_the_running_kernels_sk_buff() {
        let Ok(data) = std::fs::read(VMLINUX) else { return };
        let btf = Btf::parse(&data).unwrap();
        let len = btf.member_offset("sk_buff", "len").unwrap();
        let data_ptr = btf.member_offset("sk_buff", "data").unwrap();
        // `len` sits before `head` and `data` in every kernel since BTF.
        assert!(len < data_ptr && data_ptr.is_multiple_of(8), "len {len} data {data_ptr}");
    }
}
