"""skelfast.models"""
