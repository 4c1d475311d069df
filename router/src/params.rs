//! Bind parameters as the router sees them: borrowed from the client's `Bind` message.

/// One Bind parameter value in the format the client sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Param<'a> {
    Null,
    Text(&'a [u8]),
    Binary(&'a [u8]),
}

/// The parameters of one execution, indexed from 0 (`$1` is index 0).
pub trait Params {
    /// The value of `$index+1`, or `None` when the client sent fewer parameters.
    fn get(&self, index: usize) -> Option<Param<'_>>;
}

/// No parameters: simple-protocol statements.
impl Params for () {
    fn get(&self, _index: usize) -> Option<Param<'_>> {
        None
    }
}

impl Params for [Param<'_>] {
    fn get(&self, index: usize) -> Option<Param<'_>> {
        <[Param<'_>]>::get(self, index).copied()
    }
}

impl Params for Vec<Param<'_>> {
    fn get(&self, index: usize) -> Option<Param<'_>> {
        self.as_slice().get(index).copied()
    }
}

/// The constants the plan cache took out of a simple-protocol statement, read as text
/// parameters (the plan stands for the statement with `$n` in their place).
impl Params for crate::normalize::Literals<'_> {
    fn get(&self, index: usize) -> Option<Param<'_>> {
        self.as_slice()
            .get(index)
            .map(|text| Param::Text(text.as_bytes()))
    }
}
