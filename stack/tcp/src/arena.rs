//! Generation-checked slots: the storage behind connection, listener, half-open and
//! TIME-WAIT tables. Freed slots are reused; bumping the generation on free makes old
//! handles miss.

#[derive(Debug)]
struct Slot<T> {
    generation: u32,
    value: Option<T>,
}

#[derive(Debug)]
pub(crate) struct Arena<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    len: usize,
}

impl<T> Default for Arena<T> {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Arena<T> {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Stores `value`; returns its index and generation.
    pub(crate) fn insert(&mut self, value: T) -> (u32, u32) {
        self.len += 1;
        if let Some(index) = self.free.pop() {
            let slot = &mut self.slots[index as usize];
            slot.value = Some(value);
            (index, slot.generation)
        } else {
            self.slots.push(Slot {
                generation: 0,
                value: Some(value),
            });
            ((self.slots.len() - 1) as u32, 0)
        }
    }

    pub(crate) fn get(&self, index: u32, generation: u32) -> Option<&T> {
        let slot = self.slots.get(index as usize)?;
        if slot.generation != generation {
            return None;
        }
        slot.value.as_ref()
    }

    pub(crate) fn get_mut(&mut self, index: u32, generation: u32) -> Option<&mut T> {
        let slot = self.slots.get_mut(index as usize)?;
        if slot.generation != generation {
            return None;
        }
        slot.value.as_mut()
    }

    /// Looks up by index alone, for callers (the flow table) that own the slot's meaning.
    pub(crate) fn get_index_mut(&mut self, index: u32) -> Option<(&mut T, u32)> {
        let slot = self.slots.get_mut(index as usize)?;
        let generation = slot.generation;
        slot.value.as_mut().map(|v| (v, generation))
    }

    pub(crate) fn get_index(&self, index: u32) -> Option<(&T, u32)> {
        let slot = self.slots.get(index as usize)?;
        slot.value.as_ref().map(|v| (v, slot.generation))
    }

    pub(crate) fn remove(&mut self, index: u32, generation: u32) -> Option<T> {
        let slot = self.slots.get_mut(index as usize)?;
        if slot.generation != generation || slot.value.is_none() {
            return None;
        }
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(index);
        self.len -= 1;
        slot.value.take()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, u32, &T)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.value.as_ref().map(|v| (i as u32, s.generation, v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_generations_miss_after_reuse() {
        let mut arena = Arena::default();
        let (a, ga) = arena.insert("a");
        assert_eq!(arena.remove(a, ga), Some("a"));
        let (b, gb) = arena.insert("b");
        assert_eq!(a, b);
        assert_ne!(ga, gb);
        assert!(arena.get(a, ga).is_none());
        assert_eq!(arena.get(b, gb), Some(&"b"));
        assert!(arena.remove(a, ga).is_none());
        assert_eq!(arena.len(), 1);
    }
}
