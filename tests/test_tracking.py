"""The IoU tracker on boxes it is given: ids kept through motion, crossing and short gaps."""

from emotion_server.faces import FaceBox
from emotion_server.tracking import IoUTracker


def _box(x: float, y: float, side: int = 40) -> FaceBox:
    return FaceBox(round(x), round(y), side, side, 0.9)


def test_one_face_keeps_its_id_while_it_moves():
    tracker = IoUTracker()
    ids = [tracker.update(t / 10, [_box(10 + 12 * t, 50)]) for t in range(20)]
    assert ids == [[1]] * 20


def test_two_faces_crossing_keep_their_ids():
    """They meet in the middle frame, where the front face hides the other (one detection);
    each is still followed by its own speed afterwards."""
    tracker = IoUTracker()
    seen = []
    for t in range(21):
        left, right = 20 + 20 * t, 420 - 20 * t
        boxes = [_box(left, 100)] if t == 10 else [_box(left, 100), _box(right, 110)]
        ids = tracker.update(t / 10, boxes)
        seen.append(ids)
    assert all(ids == [1, 2] for t, ids in enumerate(seen) if t != 10)
    assert seen[10] in ([1], [2])


def test_a_new_face_gets_a_new_id_and_an_old_one_ends_after_the_gap():
    tracker = IoUTracker(max_gap_s=0.5)
    assert tracker.update(0.0, [_box(0, 0)]) == [1]
    assert tracker.update(0.1, [_box(2, 0), _box(300, 300)]) == [1, 2]
    assert tracker.update(0.4, [_box(300, 300)]) == [2]  # face 1 missed for a while
    assert tracker.update(0.5, [_box(4, 0), _box(300, 300)]) == [1, 2]  # back within the gap
    assert tracker.update(1.5, [_box(4, 0)]) == [3]  # gone too long: a new track


def test_far_jump_is_a_new_track():
    tracker = IoUTracker()
    tracker.update(0.0, [_box(0, 0)])
    assert tracker.update(0.5, [_box(400, 400)]) == [2]
