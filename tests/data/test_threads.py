"""map_on_threads and ThreadTeam: results in order, one intra-op thread per worker, errors, gradient mode."""

import threading

import pytest
import torch

from probneural.data.threads import ThreadTeam, map_on_threads


@pytest.mark.parametrize("threads, parts", [(1, 5), (2, 5), (3, 2), (2, 1)])
def test_results_in_order_with_one_worker_per_thread(threads, parts, set_threads):
    made = []  # (worker thread, its intra-op threads) per make_worker call (Thread objects: idents are reused)

    def make_worker():
        made.append((threading.current_thread(), torch.get_num_threads()))
        return lambda part: (part * part, threading.current_thread())

    set_threads(threads)
    results = map_on_threads(list(range(parts)), make_worker)
    assert torch.get_num_threads() == threads  # restored in the calling thread
    assert [value for value, _ in results] == [i * i for i in range(parts)]
    workers = min(threads, parts)
    assert len(made) == workers and len({ident for ident, _ in made}) == workers
    if workers > 1:
        assert all(intra_op == 1 for _, intra_op in made)
        # worker j took the parts j, j + W, ...: each part ran on the thread that made its worker
        by_part = [ident for _, ident in results]
        assert all(by_part[i] == by_part[i % workers] for i in range(parts))
    else:
        assert made == [(threading.current_thread(), threads)]  # the calling thread, thread count unchanged


def test_an_error_in_a_worker_reaches_the_caller_and_threads_are_restored(set_threads):
    def make_worker():
        def work(part):
            if part == 3:
                raise RuntimeError("part 3 failed")
            return part
        return work

    set_threads(2)
    with pytest.raises(RuntimeError, match="part 3 failed"):
        map_on_threads(list(range(5)), make_worker)
    assert torch.get_num_threads() == 2


def test_a_failing_worker_stops_the_others_before_their_next_part(set_threads):
    started, failed = [], threading.Event()

    def make_worker():
        def work(part):
            started.append(part)
            if part == 0:
                failed.set()
                raise ValueError("part 0 failed")
            failed.wait(5)  # the other worker's parts end only after part 0 has failed
            threading.Event().wait(0.05)
            return part
        return work

    set_threads(2)
    with pytest.raises(ValueError, match="part 0 failed"):
        map_on_threads(list(range(20)), make_worker)
    assert 0 in started and len(started) < 11  # without the stop, worker 1 would run all ten of its parts


@pytest.mark.parametrize("grad", [False, True])
def test_workers_run_under_the_callers_gradient_mode_and_nest_inline(grad, set_threads):
    seen = []

    def make_worker():
        def work(part):
            inner = map_on_threads([part, part + 10], lambda: lambda p: threading.current_thread())
            seen.append((torch.is_grad_enabled(), torch.get_num_threads(), inner))
            return part
        return work

    set_threads(2)
    with torch.set_grad_enabled(grad):
        assert map_on_threads([0, 1, 2], make_worker) == [0, 1, 2]
    assert [mode for mode, _, _ in seen] == [grad] * 3 and all(threads == 1 for _, threads, _ in seen)
    # a call from a worker (one intra-op thread) runs inline, in that worker's own thread
    assert all(len(set(inner)) == 1 and inner[0].name.startswith("probneural-") for _, _, inner in seen)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_a_team_maps_in_order_on_its_threads_and_restores_the_thread_count(threads, set_threads):
    set_threads(threads)
    with ThreadTeam("team") as team:
        assert team.size == threads and torch.get_num_threads() == 1  # the calling thread does not fork either
        results = [team.map(lambda part: (part * part, threading.current_thread(), torch.get_num_threads()), range(5))
                   for _ in range(3)]
    assert torch.get_num_threads() == threads
    for mapped in results:
        assert [value for value, _, _ in mapped] == [i * i for i in range(5)]
        assert mapped[0][1] is threading.current_thread() and all(count == 1 for _, _, count in mapped)
    workers = {thread for mapped in results for _, thread, _ in mapped[1:]}
    if threads > 1:  # the same workers for every map, not new threads per map
        assert len(workers) <= threads - 1 and all(thread.name.startswith("team") for thread in workers)
    else:
        assert workers == {threading.current_thread()}


def test_a_team_maps_inline_from_a_part_and_is_entered_once(set_threads):
    set_threads(2)
    team = ThreadTeam("team")
    with team:
        nested = team.map(lambda part: team.map(lambda inner: threading.current_thread(), [0, 1]), [0, 1])
        assert all(len(set(threads)) == 1 for threads in nested)  # a map from a part runs in that part's thread
        assert nested[1][0].name.startswith("team")
        with pytest.raises(RuntimeError, match="already entered"):
            team.__enter__()
    assert torch.get_num_threads() == 2
    with team:  # reusable once exited
        assert team.map(lambda part: part, [3, 4]) == [3, 4]


@pytest.mark.parametrize("failing", [0, 2])
def test_a_team_raises_the_first_error_after_every_part_ended(failing, set_threads):
    ended = []

    def work(part):
        if part == failing:
            raise ValueError(f"part {part} failed")
        threading.Event().wait(0.05)
        ended.append(part)
        return part

    set_threads(2)
    with ThreadTeam() as team:
        with pytest.raises(ValueError, match=f"part {failing} failed"):
            team.map(work, [0, 1, 2, 3])
        assert sorted(ended) == sorted({0, 1, 2, 3} - {failing})  # no worker outlived the call
        assert team.map(work, [1, 3]) == [1, 3]  # the team still works
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("grad", [False, True])
def test_a_team_runs_its_parts_under_the_callers_gradient_and_inference_modes(grad, set_threads):
    set_threads(2)
    with ThreadTeam() as team:
        with torch.set_grad_enabled(grad):
            assert team.map(lambda part: torch.is_grad_enabled(), [0, 1, 2]) == [grad] * 3
        with torch.inference_mode(not grad):
            assert team.map(lambda part: torch.is_inference_mode_enabled(), [0, 1, 2]) == [not grad] * 3
