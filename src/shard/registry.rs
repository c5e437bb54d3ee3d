//! Slot table of one core's connections. A slot's generation changes every time it is freed,
//! so a clientId that names an old occupant never reaches the new one.

use std::rc::Rc;

struct Slot<T> {
    generation: u32,
    value: Option<Rc<T>>,
}

pub struct Registry<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    len: usize,
}

impl<T> Default for Registry<T> {
    fn default() -> Self {
        Registry {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Registry<T> {
    /// Stores the value built by `make(slot, generation)` and returns it.
    pub fn insert(&mut self, make: impl FnOnce(u32, u32) -> T) -> Rc<T> {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    value: None,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let entry = &mut self.slots[slot as usize];
        let value = Rc::new(make(slot, entry.generation));
        entry.value = Some(value.clone());
        self.len += 1;
        value
    }

    pub fn get(&self, slot: u32, generation: u32) -> Option<&Rc<T>> {
        let entry = self.slots.get(slot as usize)?;
        if entry.generation != generation {
            return None;
        }
        entry.value.as_ref()
    }

    /// Frees the slot if it still holds that generation.
    pub fn remove(&mut self, slot: u32, generation: u32) -> Option<Rc<T>> {
        let entry = self.slots.get_mut(slot as usize)?;
        if entry.generation != generation {
            return None;
        }
        let value = entry.value.take()?;
        entry.generation = entry.generation.wrapping_add(1);
        self.free.push(slot);
        self.len -= 1;
        Some(value)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = &Rc<T>> {
        self.slots.iter().filter_map(|s| s.value.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_protect_reused_slots() {
        let mut r: Registry<(u32, u32)> = Registry::default();
        let a = r.insert(|s, g| (s, g));
        assert_eq!(*a, (0, 0));
        let b = r.insert(|s, g| (s, g));
        assert_eq!(*b, (1, 0));
        assert_eq!(r.len(), 2);
        assert!(r.remove(0, 0).is_some());
        assert!(r.remove(0, 0).is_none(), "double remove");
        let c = r.insert(|s, g| (s, g));
        assert_eq!(*c, (0, 1), "slot reused with a new generation");
        assert!(r.get(0, 0).is_none(), "the old id no longer resolves");
        assert_eq!(r.get(0, 1).map(|v| **v), Some((0, 1)));
        assert_eq!(r.iter().count(), 2);
        assert!(r.get(99, 0).is_none());
    }
}
