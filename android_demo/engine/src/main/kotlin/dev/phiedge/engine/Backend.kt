package dev.phiedge.engine

/**
 * The interface the generation loop drives (runtime/backend.py): feed token ids, get the last position's logits.
 * A backend owns one sequence's KV cache of [capacity] positions, of which the first [length] are filled:
 *
 *     cache  [ p0 p1 ... p(length-1) | free ... ]      capacity positions
 *     step(ids)      writes positions [length, length + ids.size), returns logits (vocab) of the last one
 *     stepAll(ids)   the same, returning logits (ids.size x vocab) of each (when canStepAll: a verify step)
 *     truncate(n)    forgets positions >= n (truncate(0) empties the cache)
 *
 * OrtBackend (app module) implements it on ONNX Runtime; the host tests replay recorded logits.
 */
interface Backend : AutoCloseable {
    val vocabSize: Int
    val capacity: Int
    val length: Int

    /** Appends [ids] (at least one) to the cache; returns float32 logits (vocab) after the last one. */
    fun step(ids: IntArray): FloatArray

    fun truncate(length: Int)

    /** Whether [stepAll] works: the package returns logits for several positions (format 2, or "all"). */
    val canStepAll: Boolean get() = false

    /** The longest a step may grow the cache and still be truncated back in place (Recompute.kt); null: any. */
    val rollbackLimit: Int? get() = null

    /** Appends [ids]; returns float32 logits for each of the last [keep] of them (default all: a verify step),
     *  row i after ids[ids.size - keep + i]. */
    fun stepAll(ids: IntArray, keep: Int = ids.size): Array<FloatArray> =
        throw UnsupportedOperationException("this package returns logits for one position per step (format 1); " +
            "re-export it with this version of the project to verify drafted tokens")

    /**
     * Asks a step in progress on another thread to end early (ONNX Runtime's run-options termination); that step
     * then throws [StepInterrupted], the cache keeps its length from before it, and later steps run normally.
     * A no-op when no step is running. The stop button calls it after setting the loop's CancelToken.
     */
    fun interrupt() {}

    override fun close() {}
}

/** Thrown by a step that [Backend.interrupt] ended; the loop reports the call as cancelled. */
class StepInterrupted(message: String = "the step was interrupted", cause: Throwable? = null) :
    RuntimeException(message, cause)

/** Checked between steps, never inside one (the stop button sets it). */
fun interface CancelToken {
    fun isSet(): Boolean
}

class CancelFlag : CancelToken {
    @Volatile private var set = false

    fun set() { set = true }

    override fun isSet() = set
}
