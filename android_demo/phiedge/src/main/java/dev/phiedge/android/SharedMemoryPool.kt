package dev.phiedge.android

import android.os.SharedMemory
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.util.IdentityHashMap

/**
 * NativeMemory on Android (API 27+): each buffer is an anonymous shared-memory region (ashmem or memfd) mapped
 * read-write into the process. Its pages are native memory, outside the Java heap limit, zero-filled on first
 * touch, and never written to flash; [release] unmaps and closes the region at once rather than at a GC.
 */
class SharedMemoryPool(private val name: String = "phi-edge") : NativeMemory {
    private val regions = IdentityHashMap<ByteBuffer, SharedMemory>()

    @Synchronized
    override fun allocate(bytes: Int): ByteBuffer {
        require(bytes > 0) { "a buffer needs at least one byte, got $bytes" }
        val region = SharedMemory.create("$name-${regions.size}", bytes)
        val buffer = try {
            region.mapReadWrite()
        } catch (e: Exception) {
            region.close()
            throw e
        }
        buffer.order(ByteOrder.nativeOrder())
        regions[buffer] = region
        return buffer
    }

    @Synchronized
    override fun release(buffer: ByteBuffer) {
        val region = regions.remove(buffer) ?: return
        SharedMemory.unmap(buffer)
        region.close()
    }

    @Synchronized
    override fun close() {
        for ((buffer, region) in regions) {
            SharedMemory.unmap(buffer)
            region.close()
        }
        regions.clear()
    }
}
