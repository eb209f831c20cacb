//! PLACEHOLDER until the cloud branch lands (replaced by the real module).
#[derive(Clone, serde::Deserialize)]
pub struct Secret(String);
impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}
