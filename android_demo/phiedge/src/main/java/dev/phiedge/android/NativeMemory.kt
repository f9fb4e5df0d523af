package dev.phiedge.android

import java.nio.ByteBuffer
import java.nio.ByteOrder

/**
 * Where the large tensors live (the KV cache, the logits): direct, native-order buffers that ONNX Runtime wraps
 * without copying. On a phone they must be outside the Java heap, which is a few hundred MB per app:
 * ByteBuffer.allocateDirect on Android is a non-movable array IN the managed heap, so the library uses
 * [SharedMemoryPool] (ashmem/memfd pages mapped into the process, counted as native memory) there.
 */
interface NativeMemory : AutoCloseable {
    /** A zeroed direct buffer of [bytes], in native byte order. */
    fun allocate(bytes: Int): ByteBuffer

    /** Frees one buffer from [allocate]; it must not be used after. */
    fun release(buffer: ByteBuffer)

    /** Frees every buffer still allocated. */
    override fun close()
}

/**
 * allocateDirect: native (off-heap) memory on a desktop JVM, where the host tests run; the Java heap on Android,
 * so only for the JVM. Buffers are freed by the garbage collector once unreachable.
 */
class DirectMemory : NativeMemory {
    override fun allocate(bytes: Int): ByteBuffer = ByteBuffer.allocateDirect(bytes).order(ByteOrder.nativeOrder())

    override fun release(buffer: ByteBuffer) {}

    override fun close() {}
}
