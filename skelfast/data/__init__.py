"""skelfast.data"""
