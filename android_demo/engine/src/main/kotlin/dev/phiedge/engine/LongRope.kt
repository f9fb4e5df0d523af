package dev.phiedge.engine

/**
 * A backend for LongRoPE packages (manifest "rope_switch"; runtime/engine.py does the same in Python).
 *
 * The graph rotates with LongRoPE's long tables once a step's total length exceeds [switch]. Keys cached before
 * were rotated with the short ones, so the step that first crosses the switch feeds the whole sequence again
 * from its tokens, as transformers' generate does:
 *
 *     length 10, step([a, b, c]) with switch 12  ->  inner.truncate(0); inner.step(p0 .. p9, a, b, c)
 */
class LongRopeBackend(private val inner: Backend, private val switch: Int) : Backend by inner {
    private val ids = IntArray(inner.capacity)  // the tokens in the cache

    override val ropeSwitch: Int get() = switch

    override fun step(ids: IntArray): FloatArray {
        val past = record(ids)
        if (past in 1..switch && past + ids.size > switch) {
            inner.truncate(0)
            return inner.step(this.ids.copyOf(past + ids.size))
        }
        return inner.step(ids)
    }

    override fun stepAll(ids: IntArray): Array<FloatArray> {
        val past = record(ids)
        if (past in 1..switch && past + ids.size > switch) {
            inner.truncate(0)
            val all = inner.stepAll(this.ids.copyOf(past + ids.size))
            return all.copyOfRange(all.size - ids.size, all.size)
        }
        return inner.stepAll(ids)
    }

    private fun record(ids: IntArray): Int {
        val past = inner.length
        require(past + ids.size <= inner.capacity) {
            "${ids.size} more tokens do not fit: $past of ${inner.capacity} cache positions are in use" }
        ids.copyInto(this.ids, past)
        return past
    }
}
