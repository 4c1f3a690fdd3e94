/// Who and where, recorded on every event.
#[derive(Debug, Clone)]
pub struct Actor {
    pub operator: String,
    pub station: String,
}
